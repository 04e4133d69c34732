package termsafe

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"web-01", "web-01"},
		{"hôte Größe 東京 ✓", "hôte Größe 東京 ✓"},
		{"a b", "a b"},
		{"\x1b[2J\x1b[H", `\x1b[2J\x1b[H`},
		{"\x1b]0;pwned\x07", `\x1b]0;pwned\x07`},
		{"\x1b]52;c;ZXZpbA==\x1b\\", `\x1b]52;c;ZXZpbA==\x1b\`},
		{"row\nfake-agent\tapproved", `row\nfake-agent\tapproved`},
		{"over\rwrite", `over\rwrite`},
		{"del\x7f\x00", `del\x7f\x00`},
		{"c1 \u009b2J csi", `c1 \u009b2J csi`},
		{"\u0085next line", `\u0085next line`},
		{"invoice_\u202Egnp.exe", `invoice_\u202egnp.exe`},
		{"\u202A\u202B\u202C\u202D", `\u202a\u202b\u202c\u202d`},
		{"\u2066\u2067\u2068\u2069", `\u2066\u2067\u2068\u2069`},
		{"\u200E\u200F\u061C", `\u200e\u200f\u061c`},
		{"line\u2028sep", `line\u2028sep`},
		{"bad \xff\xfe utf8", `bad \xff\xfe utf8`},
		{"tag \U000E0041", `tag \U000e0041`},
		{"", ""},
	} {
		if got := String(tc.in); got != tc.want {
			t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Whatever the input, the output is valid UTF-8 with no control or
// format character left.
func FuzzString(f *testing.F) {
	for _, s := range []string{"plain", "\x1b[31mred", "\u202Eabc", "\xff", "\u0085", "日本\t語"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := String(s)
		if !utf8.ValidString(out) {
			t.Fatalf("String(%q) = %q: not UTF-8", s, out)
		}
		for _, r := range out {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) {
				t.Fatalf("String(%q) = %q keeps %U", s, out, r)
			}
		}
		if printableASCII(s) && out != s {
			t.Fatalf("printable ASCII changed: %q → %q", s, out)
		}
		if strings.ContainsRune(out, '\x1b') {
			t.Fatal("ESC kept")
		}
	})
}

func TestJSON(t *testing.T) {
	in, _ := json.Marshal(map[string]string{"h": "a\x1b[2J\u009b\u202e\u2028\U000e0001\x7fé 漢"})
	out := JSON(in)
	for _, r := range string(out) {
		if r != ' ' && !unicode.IsPrint(r) {
			t.Fatalf("raw %U in %q", r, out)
		}
	}
	var a, b map[string]string
	if err := json.Unmarshal(in, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &b); err != nil || a["h"] != b["h"] {
		t.Fatalf("%q decodes to %q (%v), want %q", out, b["h"], err, a["h"])
	}
	if !strings.Contains(string(out), "é 漢") {
		t.Fatalf("printable text escaped: %q", out)
	}
}

func FuzzJSON(f *testing.F) {
	for _, s := range []string{"plain", "a\x1b[2J\u009b\u202e", "\U0001F600\U000e0001", "\xff\xfe", "\u2028\u2029\x7f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		in, _ := json.Marshal(s)
		out := JSON(in)
		var got, want string
		if err := json.Unmarshal(in, &want); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(out, &got); err != nil || got != want {
			t.Fatalf("%q → %q decodes to %q (%v), want %q", in, out, got, err, want)
		}
		for _, r := range string(out) {
			if r != ' ' && r != utf8.RuneError && !unicode.IsPrint(r) {
				t.Fatalf("raw %U in %q", r, out)
			}
		}
	})
}
