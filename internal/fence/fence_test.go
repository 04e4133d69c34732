package fence

import "testing"

func TestDecide(t *testing.T) {
	for _, tt := range []struct {
		name          string
		highest, term uint64
		obey          bool
		next          uint64
	}{
		{"unfenced agent, unfenced MMC", 0, 0, true, 0},
		{"first fenced order", 0, 1, true, 1},
		{"same leader", 5, 5, true, 5},
		{"newer leader", 5, 6, true, 6},
		{"newer leader after a gap", 5, 90, true, 90},
		{"deposed leader", 5, 4, false, 5},
		{"much older leader", 1 << 40, 1, false, 1 << 40},
		{"unfenced MMC after a fenced one", 1, 0, false, 1},
		{"highest possible term", 7, ^uint64(0), true, ^uint64(0)},
	} {
		obey, next := Decide(tt.highest, tt.term)
		if obey != tt.obey || next != tt.next {
			t.Errorf("%s: Decide(%d, %d) = %v, %d; want %v, %d", tt.name, tt.highest, tt.term, obey, next, tt.obey, tt.next)
		}
		if next < tt.highest {
			t.Errorf("%s: the highest term went down", tt.name)
		}
	}
}
