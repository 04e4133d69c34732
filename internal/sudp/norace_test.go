//go:build !race

package sudp

const raceEnabled = false
