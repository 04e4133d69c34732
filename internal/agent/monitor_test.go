package agent

import (
	"log/slog"
	"testing"

	"github.com/ferry-vm/ferry/internal/migration"
)

func TestActionLogLevel(t *testing.T) {
	for _, c := range []struct {
		op   string
		ok   bool
		want slog.Level
	}{
		{string(migration.OpStatus), true, slog.LevelDebug},
		{string(migration.OpStatus), false, slog.LevelInfo},
		{string(migration.OpStart), true, slog.LevelInfo},
		{"vm.create", true, slog.LevelInfo},
	} {
		if got := actionLogLevel(c.op, c.ok); got != c.want {
			t.Errorf("%s ok=%v: %v, want %v", c.op, c.ok, got, c.want)
		}
	}
}
