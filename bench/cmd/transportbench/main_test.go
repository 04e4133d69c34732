package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/bench/internal/peers"
	"github.com/ferry-vm/ferry/bench/internal/report"
)

// TestMain lets the test binary serve as the re-executed child processes.
func TestMain(m *testing.M) {
	if args := os.Args[1:]; peers.IsChildCommand(args) {
		os.Exit(peers.ChildMain(args, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func TestRunJSON(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"--bytes", "2MiB", "--reps", "2", "--protos", "tcp,kcp", "--json"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var doc report.Document
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("stdout is not one JSON document: %v\n%s", err, out.String())
	}
	if len(doc.Runs) != 4 || len(doc.Summary) != 2 {
		t.Fatalf("runs %d summary %d", len(doc.Runs), len(doc.Summary))
	}
	// Interleaved: rep1 tcp, rep1 kcp, rep2 tcp, rep2 kcp.
	order := []string{}
	for _, r := range doc.Runs {
		order = append(order, r.Proto)
		if r.Error != "" || r.Bytes != 2<<20 || r.GoodputBps <= 0 || r.CPUPerGiB <= 0 {
			t.Errorf("bad run %+v", r)
		}
	}
	if strings.Join(order, ",") != "tcp,kcp,tcp,kcp" || doc.Runs[2].Rep != 2 {
		t.Errorf("not interleaved: %v", order)
	}
	if doc.Env.NProc <= 0 || doc.Env.Kernel == "" || doc.Params.Reps != 2 {
		t.Errorf("env/params %+v %+v", doc.Env, doc.Params)
	}
}

func TestRunMarkdown(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"--bytes", "1MiB", "--reps", "1", "--protos", "tls", "--markdown"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	s := out.String()
	for _, want := range []string{"```\n$ ", "--markdown", "uname -r", "| tls | 1 |", "no SUDP ratios"} {
		if !strings.Contains(s, want) {
			t.Errorf("markdown lacks %q:\n%s", want, s)
		}
	}
}

func TestMissingFerry(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"--bytes", "1MiB", "--protos", "sudp,tcp", "--ferry", filepath.Join(t.TempDir(), "nope")}, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), "make build") || out.Len() != 0 {
		t.Fatalf("exit %d, stderr %q, stdout %q", code, errb.String(), out.String())
	}
}

func TestBadUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--bytes", "lots"}, {"--reps", "0"}, {"--protos", "tcp,ftp"}, {"--json", "--markdown"}, {"extra"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d", args, code)
		}
	}
}
