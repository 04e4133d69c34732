package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"
)

// runFerryCode runs the ferry command tree in-process and returns what
// main would print and exit with.
func runFerryCode(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	out, err := runFerry(t, args...)
	var errOut bytes.Buffer
	if err != nil {
		printError(&errOut, err)
	}
	return out, errOut.String(), exitCode(err)
}

// A mistyped command, subcommand, flag or argument fails with status 2 and
// says what to run (cobra printed a group's help and exited 0 for an
// unknown subcommand, so a script's typo passed).
func TestExitCodes(t *testing.T) {
	cases := []struct {
		args []string
		code int
		says string
	}{
		{[]string{"ctl", "agentz"}, 2, "Did you mean agents?"},
		{[]string{"ctl", "agents", "lst"}, 2, "Did you mean get or list?"},
		{[]string{"ctl", "tokens", "revoke"}, 2, "Run 'ferry ctl tokens revoke --help'"},
		{[]string{"ctl", "--bogus"}, 2, "unknown flag: --bogus"},
		{[]string{"nosuch"}, 2, `unknown command "nosuch" for "ferry"`},
		{[]string{"version", "extra"}, 2, "unknown command"},
		{[]string{"ctl"}, 0, ""},
		{[]string{"version"}, 0, ""},
	}
	for _, c := range cases {
		stdout, stderr, code := runFerryCode(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.says) {
			t.Errorf("ferry %s: exit %d, stderr %q; want exit %d saying %q", strings.Join(c.args, " "), code, stderr, c.code, c.says)
		}
		if c.code == 0 && stdout == "" {
			t.Errorf("ferry %s printed nothing", strings.Join(c.args, " "))
		}
	}
}

func TestVersion(t *testing.T) {
	stdout, _, code := runFerryCode(t, "version", "-o", "json")
	var v buildVersion
	if code != 0 || json.Unmarshal([]byte(stdout), &v) != nil {
		t.Fatalf("ferry version -o json: exit %d, %q", code, stdout)
	}
	if v.Go != runtime.Version() || v.Version == "" {
		t.Fatalf("version %+v", v)
	}
}
