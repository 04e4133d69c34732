package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/internal/wanlab"
	"github.com/ferry-vm/ferry/internal/wanlab/nat"
)

func TestMain(m *testing.M) {
	// `up` re-executes the test binary as the emulator.
	wanlab.MaybeRunChild()
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	os.Exit(m.Run())
}

func TestSpecFromFlags(t *testing.T) {
	cmd := newUpCmd()
	err := cmd.ParseFlags([]string{"--profile", "wan", "--delay", "30ms", "--loss-ba", "5%", "--rate-ab", "10mbit", "--nat-b", "symmetric"})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := specFromFlags(cmd, "wan", "", "symmetric")
	if err != nil {
		t.Fatal(err)
	}
	if spec.Profile != "wan" || spec.Both["delay"] != "30ms" || len(spec.Both) != 1 ||
		spec.BA["loss"] != "5%" || spec.AB["rate"] != "10mbit" || spec.NATB != nat.Symmetric || spec.NATA != nat.None {
		t.Errorf("spec = %+v", spec)
	}
	ab, ba, err := wanlab.BuildConfigs(spec)
	if err != nil {
		t.Fatal(err)
	}
	if ab.Rate != 10e6 || ba.Rate != 100e6 || ab.Loss != 0.01 || ba.Loss != 0.05 || ab.Delay.Milliseconds() != 30 {
		t.Errorf("ab %+v ba %+v", ab, ba)
	}
	if _, err := specFromFlags(cmd, "", "full-cone-ish", ""); err == nil {
		t.Error("bad --nat-a accepted")
	}
}

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// TestCLI checks the JSON contract of ../../shared/CLI.md end to end.
func TestCLI(t *testing.T) {
	if err := wanlab.CheckEnv(false); err != nil {
		t.Skip("skipping:", err)
	}
	name := fmt.Sprintf("c%d", os.Getpid()%100000)
	t.Cleanup(func() {
		if _, err := run(t, "down", name); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	if out, err := run(t, "up", name, "--profile", "metro", "--delay", "2ms", "--hub"); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	if _, err := run(t, "up", name); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("second up: %v", err)
	}
	out, err := run(t, "status", name, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Sites []struct{ Name, Netns, Addr string }
		Link  struct {
			AB, BA, Config json.RawMessage
		}
		PID int
		Hub *struct{ Netns, Addr string }
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(st.Sites) != 2 || st.Sites[0].Netns != name+"-a" || st.Sites[1].Netns != name+"-b" ||
		st.Sites[0].Addr == "" || st.Sites[1].Addr == "" || st.PID == 0 || len(st.Link.AB) == 0 {
		t.Errorf("status:\n%s", out)
	}
	if st.Hub == nil || st.Hub.Netns != name+"-hub" || st.Hub.Addr == "" {
		t.Errorf("status has no hub:\n%s", out)
	}
	var cfg bytes.Buffer
	_ = json.Compact(&cfg, st.Link.Config)
	if !strings.Contains(cfg.String(), `"delay":"2ms"`) || !strings.Contains(cfg.String(), `"rate_bps":1000000000`) {
		t.Errorf("config: %s", cfg.String())
	}
	if out, err := run(t, "list"); err != nil || !strings.Contains(out, name) {
		t.Errorf("list: %v\n%s", err, out)
	}
	if out, err := run(t, "down", name); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	if _, err := run(t, "status", name); err == nil {
		t.Error("status after down succeeded")
	}
}
