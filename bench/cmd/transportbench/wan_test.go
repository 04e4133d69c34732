package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/bench/internal/report"
)

func TestParseLabProfiles(t *testing.T) {
	labs, err := parseLabProfiles(matrixProfiles, "--queue 50ms")
	if err != nil || len(labs) != 5 {
		t.Fatalf("%v %v", labs, err)
	}
	if got := strings.Join(labs[2].Args, " "); got != "--profile wan --loss 5% --queue 50ms" || labs[2].Label != "wan --loss 5% --queue 50ms" {
		t.Errorf("wan@5%%: %q / %q", got, labs[2].Label)
	}
	if got := strings.Join(labs[4].Args, " "); got != "--profile wan1g --queue 50ms" {
		t.Errorf("wan1g: %q", got)
	}
	if _, err := parseLabProfiles(" , ", ""); err == nil {
		t.Error("empty list accepted")
	}
	for _, args := range [][]string{
		{"--matrix", "--lab-profile", "wan"}, {"--lab-loss", "5%"}, {"--lab-profiles", "wan@1%", "--lab-loss", "5%"},
		{"--lab-profile", "wan", "--server-netns", "x"}, {"--time-cap", "-1s"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d (%s)", args, code, errb.String())
		}
	}
}

func TestWANNeedsRootOrBinary(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"--lab-profile", "clean", "--protos", "tcp", "--wanlab", filepath.Join(t.TempDir(), "nope")}, &out, &errb)
	if code != 2 || out.Len() != 0 {
		t.Fatalf("exit %d stdout %q", code, out.String())
	}
	want := "needs root"
	if os.Geteuid() == 0 {
		want = "make build"
	}
	if !strings.Contains(errb.String(), want) {
		t.Fatalf("stderr %q lacks %q", errb.String(), want)
	}
}

// TestWANSmoke runs the WAN mode for real: a tiny transfer of tcp-bbr and
// sudp on the clean profile. Root only, and only with ../bin/ferry and
// ../bin/wanlab built (`make build`).
func TestWANSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping the WAN-lab smoke test: needs root (network namespaces, TUN)")
	}
	ferry, _ := filepath.Abs(filepath.Join("..", "..", "..", "bin", "ferry"))
	wanlab, _ := filepath.Abs(filepath.Join("..", "..", "..", "bin", "wanlab"))
	for _, p := range []string{ferry, wanlab} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("skipping the WAN-lab smoke test: %s missing (run `make build` in the repository root)", p)
		}
	}
	var out, errb bytes.Buffer
	code := run([]string{"--lab-profile", "clean", "--bytes", "1MiB", "--reps", "1", "--time-cap", "20s",
		"--protos", "tcp-bbr,sudp", "--ferry", ferry, "--wanlab", wanlab, "--json"}, &out, &errb)
	t.Log(errb.String())
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	var w report.WAN
	if err := json.Unmarshal(out.Bytes(), &w); err != nil {
		t.Fatalf("stdout is not one JSON document: %v\n%s", err, out.String())
	}
	if len(w.Sections) != 1 || len(w.Sections[0].Runs) != 2 {
		t.Fatalf("sections %+v", w.Sections)
	}
	d := w.Sections[0]
	name := d.Lab.Name
	if d.Lab.ServerNetns != name+"-b" || d.Lab.ClientNetns != name+"-a" || d.Params.KCPWindow != labKCPWindow {
		t.Errorf("lab %+v params %+v", d.Lab, d.Params)
	}
	for _, m := range d.Runs {
		if m.Error != "" || m.Capped || m.Delivered != 1<<20 || m.GoodputBps <= 0 {
			t.Errorf("run %+v", m)
		}
		if m.Link == nil || m.Link.AB.WireBytes < 1<<20 || m.Link.BA.Packets == 0 {
			t.Errorf("%s: link counters %+v", m.Proto, m.Link)
		}
	}
	// The lab is gone.
	if ls, _ := exec.Command(wanlab, "list").CombinedOutput(); strings.Contains(string(ls), name) {
		t.Errorf("lab %s left behind:\n%s", name, ls)
	}
	if ns, _ := exec.Command("ip", "netns", "list").CombinedOutput(); strings.Contains(string(ns), fmt.Sprintf("%s-", name)) {
		t.Errorf("namespaces of %s left behind:\n%s", name, ns)
	}
}
