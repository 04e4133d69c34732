package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// browser starts headless Chromium (Debian's chromium, which `make
// test-deps` installs) for the test; every uncaught script error, console
// error and security (CSP) report of the page is collected.
func browser(t *testing.T) (context.Context, func() []string) {
	t.Helper()
	path := ""
	for _, p := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if x, err := exec.LookPath(p); err == nil {
			path = x
			break
		}
	}
	if path == "" {
		t.Fatal("no chromium on PATH: the console's browser tests need it (`make test-deps` installs Debian's chromium)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Flag("disable-gpu", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	var mu sync.Mutex
	var problems []string
	note := func(s string) {
		mu.Lock()
		problems = append(problems, s)
		mu.Unlock()
	}
	err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			note(fmt.Sprintf("script error: %s %v", ev.ExceptionDetails.Text, ev.ExceptionDetails.Exception))
		case *runtime.EventConsoleAPICalled:
			if ev.Type == "error" {
				note(fmt.Sprintf("console.error: %v", ev.Args))
			}
		case *cdplog.EventEntryAdded:
			// The browser's own favicon request meets the API's 404.
			if ev.Entry.Level == cdplog.EntryLevelError && !strings.HasSuffix(ev.Entry.URL, "/favicon.ico") {
				note(fmt.Sprintf("%s: %s (%s)", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
			}
		}
	})
	if err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	if _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("chromium: Log.enable: %v", err)
	}
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(problems)
	}
}

// browse runs browser steps with a deadline, failing the test with what
// the page showed.
func browse(t *testing.T, ctx context.Context, what string, limit time.Duration, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if err := chromedp.Do(tctx, steps...); err != nil {
		body, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
		t.Fatalf("%s: %v\n--- the page showed ---\n%s", what, err, body)
	}
}

// waitJS polls a script until it returns true.
func waitJS(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(100*time.Millisecond))
}

// TestConsoleBrowser drives the web console in headless Chromium against
// a real MMC and agents: log in with the admin token, approve a pending
// agent, start a migration and watch it to completion (live progress,
// then the switch-over timeline), cancel another mid-transfer, see an
// alarm and acknowledge it. Requests without the session cookie, or
// with it and a wrong CSRF token, are refused.
func TestConsoleBrowser(t *testing.T) {
	c := newCluster(t)
	c.startSites(t)
	c.startAgent("h3") // no token: pending until approved in the console
	c.waitFor("h3 pending", func() bool { a, ok := c.agent("h3"); return ok && a.State == "pending" })
	for _, vm := range [][]string{{"web", "h1", "24MiB", "fill=1,dirty=1MB/s"}, {"db", "h1", "64MiB", "dirty=20MB/s"}, {"doomed", "h2", "16MiB", "cpu=0.1"}} {
		if err := c.ctl(nil, "vms", "create", vm[0], "--host", vm[1], "--memory", vm[2], "--workload", vm[3]); err != nil {
			t.Fatal(err)
		}
	}
	c.waitFor("the VMs running", func() bool {
		return c.vmState("h1", "web") == "running" && c.vmState("h1", "db") == "running" && c.vmState("h2", "doomed") == "running"
	})
	token, err := os.ReadFile(filepath.Join(c.dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + c.admin

	ctx, problems := browser(t)

	// Log in: the console sends an unauthenticated visitor to the login
	// page; the token gives a session.
	browse(t, ctx, "login page", 30*time.Second,
		chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible(chromedp.ID("token")),
	)
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(loc, "/ui/login") {
		t.Fatalf("unauthenticated visit ended at %s, want the login page", loc)
	}
	browse(t, ctx, "login", 30*time.Second,
		chromedp.SendKeys(chromedp.ID("token"), strings.TrimSpace(string(token))),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("view-overview")),
		waitJS(`document.querySelector("#conn").textContent.startsWith("live")`),
	)
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{base + "/ui/"}})
	if err != nil {
		t.Fatal(err)
	}
	var session *network.Cookie
	for _, ck := range cookies.Cookies {
		if ck.Name == "ferry_console" {
			session = ck
		}
	}
	if session == nil || !session.HTTPOnly || session.SameSite != network.CookieSameSiteStrict {
		t.Fatalf("session cookie: %+v", session)
	}

	// Approve the pending agent.
	browse(t, ctx, "approve h3", 30*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`#pending button.approve`)),
		chromedp.Click(chromedp.CSS(`#pending button.approve`)),
		waitJS(`!document.querySelector("#pending-none").hidden`),
	)
	c.waitFor("h3 approved", func() bool { a, ok := c.agent("h3"); return ok && a.State == "approved" })

	// Start a migration and watch it: live progress while it copies
	// (capped at 4 Mbit/s: 24 MiB would take 50 s), raise its cap to
	// 400 Mbit/s from the console, see it complete with its switch-over
	// timeline.
	browse(t, ctx, "migrate web", 30*time.Second,
		chromedp.Click(chromedp.CSS(`nav button[data-view="migrations"]`)),
		waitJS(`[...document.querySelectorAll("#migrate-vm option")].some(o => o.value === "web") && [...document.querySelectorAll("#migrate-to option")].some(o => o.value === "h2")`),
		chromedp.SetValue(chromedp.ID("migrate-vm"), "web"),
		chromedp.SetValue(chromedp.ID("migrate-to"), "h2"),
		chromedp.SetValue(chromedp.ID("migrate-cap"), "4"),
		chromedp.Click(chromedp.ID("migrate-start")),
	)
	row := func(vm, state string) string {
		return fmt.Sprintf(`[...document.querySelectorAll("#migrations tbody tr")].some(r => r.children[1].textContent === %q && r.dataset.state === %q)`, vm, state)
	}
	browse(t, ctx, "web's live progress", 60*time.Second,
		waitJS(row("web", "transferring")),
		waitJS(`!document.querySelector("#detail").hidden && document.querySelector('#detail-facts dd[data-fact="Remaining"]') !== null`),
		// The chart grows with each state message while it copies.
		waitJS(`(document.querySelector("#chart-remaining polyline")?.getAttribute("points") || "").split(" ").length >= 3`),
	)
	browse(t, ctx, "raise web's cap", 30*time.Second,
		chromedp.WaitVisible(chromedp.ID("cap-form")),
		chromedp.SetValue(chromedp.ID("cap-value"), "400"),
		chromedp.Click(chromedp.ID("cap-set")),
		waitJS(`document.querySelector('#detail-facts dd[data-fact="Bandwidth cap"]')?.textContent === "400.0 Mbit/s"`),
	)
	browse(t, ctx, "web completed", 90*time.Second,
		waitJS(row("web", "completed")),
		waitJS(`document.querySelector('#timeline li[data-step="paused"]') !== null && document.querySelector('#timeline li[data-step="resumed"]') !== null`),
	)
	c.waitFor("web on h2", func() bool { return c.vmState("h2", "web") == "running" && c.vmState("h1", "web") == "" })
	var ms []struct {
		VM           string  `json:"vm"`
		MaxBandwidth float64 `json:"max_bandwidth"`
		TotalMS      int64   `json:"total_ms"`
	}
	if err := c.ctl(&ms, "migrations", "list"); err != nil || len(ms) != 1 {
		t.Fatalf("migrations: %+v %v", ms, err)
	}
	// At the first cap the copy alone needs 50 s.
	if m := ms[0]; m.MaxBandwidth != 50e6 || m.TotalMS >= 40_000 {
		t.Fatalf("web's migration: cap %v B/s (want 50e6), total %d ms (want well under the 50 s the first cap needs)", m.MaxBandwidth, m.TotalMS)
	}

	// Cancel another mid-transfer (20 MB/s dirtied through 16 Mbit/s
	// cannot finish first).
	browse(t, ctx, "migrate db", 30*time.Second,
		chromedp.SetValue(chromedp.ID("migrate-vm"), "db"),
		chromedp.SetValue(chromedp.ID("migrate-to"), "h2"),
		chromedp.SetValue(chromedp.ID("migrate-cap"), "16"),
		chromedp.Click(chromedp.ID("migrate-start")),
		waitJS(row("db", "transferring")),
	)
	browse(t, ctx, "cancel db", 60*time.Second,
		chromedp.Click(chromedp.CSS(`#migrations tbody tr[data-state="transferring"] button.cancel`)),
		waitJS(row("db", "cancelled")),
	)
	c.waitFor("db on h1 only", func() bool { return c.vmState("h1", "db") == "running" && c.vmState("h2", "db") == "" })

	// An alarm: a VM process dies; the console shows it; acknowledge it.
	c.killSimVM("h2", "doomed")
	browse(t, ctx, "acknowledge the alarm", 60*time.Second,
		chromedp.Click(chromedp.CSS(`nav button[data-view="alarms"]`)),
		waitJS(`[...document.querySelectorAll("#alarms tbody tr.open")].some(r => r.children[3].textContent === "vm-stopped")`),
		chromedp.Click(chromedp.CSS(`#alarms tbody tr.open button.ack`)),
		waitJS(`document.querySelectorAll("#alarms tbody tr.open").length === 0 && document.querySelectorAll("#alarms tbody tr.acked").length > 0`),
	)
	if got := c.alarms(); len(got) == 0 || got[0].AckedBy != "admin" {
		t.Fatalf("alarms after the console's acknowledgement: %+v", got)
	}

	// The policy view says why nothing moved (here: the default policy,
	// nothing violating, or the policy off) rather than an empty list.
	browse(t, ctx, "policy", 30*time.Second,
		chromedp.Click(chromedp.CSS(`nav button[data-view="policy"]`)),
		waitJS(`/no VM violated its SLA|The policy is off|Held back at/.test(document.querySelector("#policy-summary").textContent)`),
	)

	// The audit view lists what the console did.
	browse(t, ctx, "audit", 30*time.Second,
		chromedp.Click(chromedp.CSS(`nav button[data-view="audit"]`)),
		waitJS(`[...document.querySelectorAll("#audit tbody tr")].some(r => r.children[3].textContent === "alarm.ack")`),
		waitJS(`[...document.querySelectorAll("#audit tbody tr")].some(r => r.children[3].textContent === "migration.bandwidth")`),
	)

	// Forged requests: no cookie, or the real cookie and a wrong CSRF
	// token, change nothing.
	refused := func(hdr http.Header, jar http.CookieJar) int {
		req, _ := http.NewRequest("POST", base+"/ui/api/migrations", strings.NewReader(`{"vm":"web","to":"h1"}`))
		req.Header = hdr
		res, err := (&http.Client{Jar: jar}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if code := refused(http.Header{"Content-Type": {"application/json"}}, nil); code != http.StatusUnauthorized {
		t.Errorf("POST without the session cookie: %d, want 401", code)
	}
	jar, _ := cookiejar.New(nil)
	u, _ := url.Parse(base + "/ui/")
	jar.SetCookies(u, []*http.Cookie{{Name: session.Name, Value: session.Value, Path: "/ui/"}})
	if code := refused(http.Header{"Content-Type": {"application/json"}, "X-Csrf-Token": {"forged"}}, jar); code != http.StatusForbidden {
		t.Errorf("POST with the cookie and a wrong CSRF token: %d, want 403", code)
	}
	if c.vmState("h2", "web") != "running" {
		t.Error("a refused request moved web")
	}
	if p := problems(); len(p) > 0 {
		t.Errorf("the page logged errors: %v", p)
	}
}
