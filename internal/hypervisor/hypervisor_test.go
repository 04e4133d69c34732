package hypervisor

import "testing"

func TestParseWorkload(t *testing.T) {
	tests := []struct {
		in   string
		want Workload
		bad  bool
	}{
		{"", Workload{}, false},
		{"cpu=0.8,dirty=20MB/s,net=5MB/s", Workload{CPU: 0.8, Dirty: 20e6, Net: 5e6}, false},
		{"dirty=1MiB", Workload{Dirty: 1 << 20}, false},
		{"cpu=1.5", Workload{}, true},
		{"fill=1,dirty=10MB/s", Workload{Fill: 1, Dirty: 10e6}, false},
		{"fill=1,text=0.75", Workload{Fill: 1, Text: 0.75}, false},
		{"text=1.2", Workload{}, true},
		{"fill=1.5", Workload{}, true},
		{"cpu=-0.1", Workload{}, true},
		{"ram=1GB", Workload{}, true},
		{"cpu", Workload{}, true},
		{"dirty=fast", Workload{}, true},
	}
	for _, tt := range tests {
		got, err := ParseWorkload(tt.in)
		if (err != nil) != tt.bad || (!tt.bad && got != tt.want) {
			t.Errorf("ParseWorkload(%q) = %+v, %v", tt.in, got, err)
		}
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"vm1", "web-01", "a.b_c"} {
		if CheckName(ok) != nil {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "-x", "../etc", "a/b", "x y", string(make([]byte, 70))} {
		if CheckName(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestValidChannel(t *testing.T) {
	for _, ok := range []string{"qemu", "nbd", "a", "multifd12", "abcdefghijklmnop"} {
		if !ValidChannel(ok) {
			t.Errorf("ValidChannel(%q) = false", ok)
		}
	}
	for _, bad := range []string{"", "QEMU", "nbd-0", "../x", "a b", "abcdefghijklmnopq", "ü"} {
		if ValidChannel(bad) {
			t.Errorf("ValidChannel(%q) = true", bad)
		}
	}
}
