package socket

import "unsafe"

// unsafePointer reads and writes control-message payloads in place, as the
// kernel lays them out (native byte order).
func unsafePointer[T any](p *T) unsafe.Pointer { return unsafe.Pointer(p) }
