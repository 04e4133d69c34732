package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flags := func() (*pflag.FlagSet, *string, *time.Duration, *[]string, *bool) {
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		listen := fs.String("listen", "0.0.0.0:7946", "")
		iv := fs.Duration("report-interval", 5*time.Second, "")
		macs := fs.StringSlice("macs", nil, "")
		b := fs.Bool("allow-changed-facts", false, "")
		return fs, listen, iv, macs, b
	}

	fs, listen, iv, macs, b := flags()
	p := write("listen: 127.0.0.1:9000\nreport-interval: 2s\nmacs: [02:00:00:00:00:01, 02:00:00:00:00:02]\nallow-changed-facts: true\n")
	if err := applyConfigFile(fs, p); err != nil {
		t.Fatal(err)
	}
	if *listen != "127.0.0.1:9000" || *iv != 2*time.Second || len(*macs) != 2 || (*macs)[1] != "02:00:00:00:00:02" || !*b {
		t.Fatalf("got listen=%s iv=%v macs=%v b=%v", *listen, *iv, *macs, *b)
	}

	// The command line wins.
	fs, listen, _, _, _ = flags()
	if err := fs.Parse([]string{"--listen", "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfigFile(fs, p); err != nil || *listen != "127.0.0.1:1" {
		t.Fatalf("command line lost to the file: %s %v", *listen, err)
	}

	for name, bad := range map[string]string{
		"unknown key": "lisen: 1\n",
		"bad value":   "report-interval: soon\n",
		"mapping":     "listen: {a: 1}\n",
		"not yaml":    "listen: [\n",
	} {
		fs, _, _, _, _ = flags()
		err := applyConfigFile(fs, write(bad))
		if err == nil || !strings.Contains(err.Error(), "c.yaml") {
			t.Errorf("%s: err = %v, want an error naming the file", name, err)
		}
	}
	if err := applyConfigFile(fs, filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("missing file accepted")
	}
}
