package replica

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// raft's hclog calls reach slog with their level, name and arguments,
// and the level checks follow the slog handler's.
func TestHCLogAdapter(t *testing.T) {
	var buf bytes.Buffer
	l := newHCLog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	n := l.Named("raft").Named("snap").With("id", "x")
	n.Warn("low disk", "free", 3)
	n.Debug("hidden")
	n.Log(hclog.Off, "hidden too")
	out := buf.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, `msg="raft.snap: low disk"`) ||
		!strings.Contains(out, "id=x") || !strings.Contains(out, "free=3") {
		t.Fatalf("warn line: %s", out)
	}
	if strings.Contains(out, "hidden") {
		t.Fatalf("below-level lines written: %s", out)
	}
	if n.IsDebug() || !n.IsInfo() || n.GetLevel() != hclog.Info || n.Name() != "raft.snap" {
		t.Fatal("level or name checks")
	}
	if got := n.ImpliedArgs(); len(got) != 2 {
		t.Fatalf("implied args %v", got)
	}
	n.StandardLogger(nil).Print("std")
	if !strings.Contains(buf.String(), "msg=std") {
		t.Fatalf("standard logger: %s", buf.String())
	}
}

// hclog.Fmt values (raft logs its configurations with them) are printed
// formatted, not as a format and its arguments apart.
func TestHCLogFormatsFmtValues(t *testing.T) {
	var buf bytes.Buffer
	l := newHCLog(slog.New(slog.NewTextHandler(&buf, nil)))
	l.Info("initial configuration", "servers", hclog.Fmt("%+v", []struct{ ID string }{{"a"}}))
	if got := buf.String(); !strings.Contains(got, `servers=[{ID:a}]`) || strings.Contains(got, "%+v") {
		t.Fatalf("logged %q", got)
	}
}
