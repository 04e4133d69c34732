package units

import "testing"

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		err  bool
	}{
		{"1048576", 1 << 20, false},
		{"1GiB", 1 << 30, false},
		{"500MB", 500e6, false},
		{"64k", 64 << 10, false},
		{"1.5 MiB", 3 << 19, false},
		{"", 0, true},
		{"-1", 0, true},
		{"lots", 0, true},
	}
	for _, tc := range tests {
		got, err := ParseBytes(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d, err=%v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want float64
	}{
		{"100mbit", 100e6},
		{"1gbit", 1e9},
		{"1.5Gbit/s", 1.5e9},
		{"125MB/s", 1e9},
		{"10mbps", 10e6},
		{"8000", 8000},
	}
	for _, tc := range tests {
		got, err := ParseRate(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	if _, err := ParseRate("fast"); err == nil {
		t.Error("ParseRate(fast) accepted")
	}
}

func TestFormat(t *testing.T) {
	if s := FormatBytes(3 << 30); s != "3.00 GiB" {
		t.Errorf("FormatBytes = %q", s)
	}
	if s := FormatRate(2.5e9); s != "2.50 Gbit/s" {
		t.Errorf("FormatRate = %q", s)
	}
}
