// Package termsafe makes strings that came from the network safe to print
// on an operator's terminal.
//
// Host names, VM names, agents' error messages, facts, alarm and audit
// details are chosen by whoever runs an agent (or claims to, while
// enrolling). Printed raw, an ESC starts a terminal control sequence (clear
// the screen, move the cursor, rewrite what was printed above, set the
// window title, on some terminals write to the clipboard); a newline or tab
// adds rows or columns to a table; a bidi override (U+202E) makes text
// read in another order than it is. String escapes all of these, the way
// strconv.Quote does but without the quotes, so ordinary text prints
// unchanged.
package termsafe

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// String returns s with every rune that is not printable escaped: C0
// controls and DEL (\n, \t, \r, \x1b …), C1 controls (\u0080–\u009f),
// format characters among them the bidi embeddings, overrides and
// isolates (U+202A–U+202E, U+2066–U+2069) and marks (U+200E, U+200F,
// U+061C), line and paragraph separators, and bytes that are not UTF-8
// (\xff). Letters, marks, digits, punctuation, symbols and the ASCII space
// in any script are kept.
func String(s string) string {
	if printableASCII(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r == ' ' || unicode.IsPrint(r):
			b.WriteString(s[i : i+n])
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
		i += n
	}
	return b.String()
}

// Strings is String of each, joined by sep.
func Strings(v []string, sep string) string {
	out := make([]string, len(v))
	for i, s := range v {
		out[i] = String(s)
	}
	return strings.Join(out, sep)
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}

// JSON returns the JSON text b with every rune String would escape that
// encoding/json leaves raw — DEL, C1 controls, bidi and other format
// characters, line separators — written as a \u escape instead, so that a
// JSON log line read on a terminal cannot drive it. Outside strings JSON
// text is ASCII, so only string contents change, and a decoder reads the
// same values. Bytes that are not UTF-8 (encoding/json writes U+FFFD for
// them) are kept.
func JSON(b []byte) []byte {
	clean := true
	for _, c := range b {
		if c >= 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && n == 1, r == ' ', r < 0x7f, r != 0x7f && unicode.IsPrint(r):
			out = append(out, b[i:i+n]...)
		case r <= 0xffff:
			out = fmt.Appendf(out, `\u%04x`, r)
		default:
			r -= 0x10000
			out = fmt.Appendf(out, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		}
		i += n
	}
	return out
}
