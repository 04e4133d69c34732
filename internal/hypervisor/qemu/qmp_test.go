package qemu

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseReply(t *testing.T) {
	for _, tc := range []struct {
		line, want string
		err        error
	}{
		{`{"return": {}}`, `{}`, nil},
		{`{"return": {"status": "running", "running": true}}`, `{"status": "running", "running": true}`, nil},
		{`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`, "", errEvent},
		{`{"error": {"class": "GenericError", "desc": "no"}}`, "", &QMPError{}},
		{`{"QMP": {}}`, "", errors.New("neither")},
		{`not json`, "", errors.New("malformed")},
	} {
		got, err := parseReply("x", []byte(tc.line))
		switch {
		case tc.err == nil && (err != nil || string(got) != tc.want):
			t.Errorf("%s: %s, %v", tc.line, got, err)
		case tc.err == errEvent && !errors.Is(err, errEvent):
			t.Errorf("%s: %v, want an event", tc.line, err)
		case tc.err != nil && err == nil:
			t.Errorf("%s: no error", tc.line)
		}
		var qe *QMPError
		if _, ok := tc.err.(*QMPError); ok && (!errors.As(err, &qe) || qe.Desc != "no" || qe.Class != "GenericError") {
			t.Errorf("%s: %v, want a QMPError", tc.line, err)
		}
	}
}

// FuzzParseReply: no line QEMU (or whatever holds the socket) sends makes
// the parser panic, and a reply is either a value, an event or an error.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{`{"return": {}}`, `{"event": "STOP"}`, `{"error": {"class": "C", "desc": "d"}}`,
		`{"return": null}`, `{"QMP": {"version": {}}}`, `[]`, `{"return": [1,2,3], "event": ""}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		ret, err := parseReply("fuzz", line)
		if err == nil && ret == nil {
			t.Fatalf("%q: neither a value nor an error", line)
		}
	})
}

// A monitor that never answers, or floods one endless line, costs the
// caller its context's deadline or an error, not a hang or its memory.
func TestQMPBadMonitor(t *testing.T) {
	dir := t.TempDir()
	for name, serve := range map[string]func(c net.Conn){
		"silent": func(c net.Conn) { time.Sleep(2 * time.Second) },
		"flood": func(c net.Conn) {
			junk := []byte(strings.Repeat("x", 64<<10))
			for {
				if _, err := c.Write(junk); err != nil {
					return
				}
			}
		},
		"not-qmp": func(c net.Conn) { _, _ = c.Write([]byte("{\"hello\": 1}\n")) },
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name+".sock")
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				serve(c)
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			q, err := dialQMP(ctx, path)
			if err == nil {
				q.Close()
				t.Fatal("a monitor that is not QMP was accepted")
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("took %v", time.Since(start))
			}
		})
	}
	_ = os.Remove(dir)
}
