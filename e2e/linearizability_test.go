package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/policy"
)

// The linearizability check (issue #18): concurrent clients drive the
// admin API of a three-member cluster while the leader is killed,
// restarted and paused; every call and return is recorded and
// porcupine decides whether some sequential order of the operations,
// each taking effect between its call and its return, explains every
// answer. Two objects are checked, each with its own model:
//
//   - the policy document as a register: PUT /v1/policy writes a
//     client-chosen marker (the cooldown, unique per write) and returns
//     the stored version, which must be above every version before it;
//     GET /v1/policy must return exactly the version and marker of the
//     write linearized last. A lost acknowledged write shows as a read
//     of an older document or a version handed out twice, a stale read
//     as an old marker.
//   - the join tokens as a set: POST /v1/tokens creates a token whose
//     `uses` is a client-chosen marker (unique per create) that the list
//     shows back as uses_left; POST /v1/tokens/{id}/revoke revokes it;
//     GET /v1/tokens must show every token created before it (revoked
//     if revoked before it) and none that was never created. The set
//     is checked per token (porcupine partitions), each list being one
//     read per token.
//
// A write whose outcome the client cannot know (a timeout, a reset
// connection, a 502/504 "may or may not have been applied", any error
// from the handler) is kept as a pending operation with an infinite
// return time: the checker may apply it anywhere after its call, or
// never (resolvePending settles the policy's before the check). Only a refusal that comes before any handler runs is dropped as
// not applied: a refused connection, and 503 (on these routes only
// leaderOnly and forward answer 503, before the handler). Failed reads
// tell nothing and are dropped.

// linOutcome classifies one HTTP exchange.
type linOutcome int

const (
	linOK      linOutcome = iota // 2xx: applied (a write) or answered (a read)
	linRefused                   // certainly not applied
	linUnknown                   // may or may not have been applied
)

// linClassify is the rule above, pure for its table test.
func linClassify(status int, err error) linOutcome {
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return linRefused
		}
		return linUnknown
	}
	switch {
	case status >= 200 && status < 300:
		return linOK
	case status == http.StatusServiceUnavailable:
		return linRefused
	}
	return linUnknown
}

func TestLinClassify(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	read := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	for _, c := range []struct {
		status int
		err    error
		want   linOutcome
	}{
		{200, nil, linOK},
		{201, nil, linOK},
		{503, nil, linRefused},
		{0, fmt.Errorf("Put: %w", dial), linRefused},
		{0, fmt.Errorf("Put: %w", read), linUnknown},
		{0, errors.New("context deadline exceeded (Client.Timeout exceeded while awaiting headers)"), linUnknown},
		{502, nil, linUnknown},
		{504, nil, linUnknown},
		{400, nil, linUnknown}, // a raft error in setPolicy is a 400
		{500, nil, linUnknown},
	} {
		if got := linClassify(c.status, c.err); got != c.want {
			t.Errorf("linClassify(%d, %v) = %d, want %d", c.status, c.err, got, c.want)
		}
	}
}

// TestLinModels: the models accept what a linearizable admin API may
// answer and refuse a stale read, a lost write and a revived token.
func TestLinModels(t *testing.T) {
	put := func(call, ret int64, m int64, v uint64) porcupine.Operation {
		return porcupine.Operation{Input: polInput{Put: true, Marker: m}, Call: call, Output: polOutput{Version: v, Marker: m}, Return: ret}
	}
	get := func(call, ret int64, m int64, v uint64) porcupine.Operation {
		return porcupine.Operation{ClientId: 1, Input: polInput{}, Call: call, Output: polOutput{Version: v, Marker: m}, Return: ret}
	}
	tok := func(op string, call, ret int64, m, st int) porcupine.Operation {
		out := tokOutput{State: st, Unknown: ret == pending}
		return porcupine.Operation{Input: tokInput{Op: op, Marker: m}, Call: call, Output: out, Return: ret}
	}
	for _, c := range []struct {
		name  string
		model porcupine.Model
		ops   []porcupine.Operation
		want  porcupine.CheckResult
	}{
		{"policy: read after write", policyModel, []porcupine.Operation{put(0, 1, 7, 1), get(2, 3, 7, 1)}, porcupine.Ok},
		{"policy: concurrent read sees old", policyModel, []porcupine.Operation{put(0, 5, 7, 1), get(1, 2, 0, 0)}, porcupine.Ok},
		{"policy: stale read", policyModel, []porcupine.Operation{put(0, 1, 7, 1), get(2, 3, 0, 0)}, porcupine.Illegal},
		{"policy: never-written value", policyModel, []porcupine.Operation{get(0, 1, 9, 1)}, porcupine.Illegal},
		{"policy: lost write (version twice)", policyModel, []porcupine.Operation{put(0, 1, 7, 1), put(2, 3, 8, 1)}, porcupine.Illegal},
		{"policy: version back", policyModel, []porcupine.Operation{put(0, 1, 7, 2), put(2, 3, 8, 1)}, porcupine.Illegal},
		{"policy: lost write read back old", policyModel, []porcupine.Operation{put(0, 1, 7, 1), put(2, 3, 8, 2), get(4, 5, 7, 1)}, porcupine.Illegal},
		{"tokens: create then list", tokenModel, []porcupine.Operation{tok("create", 0, 1, 5, 0), tok("read", 2, 3, 5, tokActive)}, porcupine.Ok},
		{"tokens: acked create missing", tokenModel, []porcupine.Operation{tok("create", 0, 1, 5, 0), tok("read", 2, 3, 5, tokAbsent)}, porcupine.Illegal},
		{"tokens: revoke then active", tokenModel, []porcupine.Operation{tok("create", 0, 1, 5, 0), tok("revoke", 2, 3, 5, 0), tok("read", 4, 5, 5, tokActive)}, porcupine.Illegal},
		{"tokens: pending create, seen then gone", tokenModel, []porcupine.Operation{tok("create", 0, pending, 5, 0), tok("read", 2, 3, 5, tokActive), tok("read", 4, 5, 5, tokAbsent)}, porcupine.Illegal},
		{"tokens: pending create never seen", tokenModel, []porcupine.Operation{tok("create", 0, pending, 5, 0), tok("read", 2, 3, 5, tokAbsent)}, porcupine.Ok},
	} {
		if got := porcupine.CheckOperationsTimeout(c.model, c.ops, 5*time.Second); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// TestResolvePending: a pending write a read saw takes that read's
// version; one never seen is dropped; the verdict stays.
func TestResolvePending(t *testing.T) {
	put := func(call, ret int64, m int64, v uint64) porcupine.Operation {
		out := polOutput{Version: v, Marker: m}
		if ret == pending {
			out = polOutput{Unknown: true}
		}
		return porcupine.Operation{Input: polInput{Put: true, Marker: m}, Call: call, Output: out, Return: ret}
	}
	get := func(call, ret int64, m int64, v uint64) porcupine.Operation {
		return porcupine.Operation{Input: polInput{}, Call: call, Output: polOutput{Version: v, Marker: m}, Return: ret}
	}
	for _, c := range []struct {
		name        string
		ops         []porcupine.Operation
		wantDropped int
		want        porcupine.CheckResult
	}{
		{"seen: resolved", []porcupine.Operation{put(0, pending, 7, 0), get(1, 2, 7, 1), put(3, 4, 8, 2)}, 0, porcupine.Ok},
		{"unseen: dropped", []porcupine.Operation{put(0, pending, 7, 0), put(1, 2, 8, 2), get(3, 4, 8, 2)}, 1, porcupine.Ok},
		{"unseen, not applied", []porcupine.Operation{put(0, pending, 7, 0), get(3, 4, 0, 0)}, 1, porcupine.Ok},
		{"seen, then lost", []porcupine.Operation{put(0, pending, 7, 0), get(1, 2, 7, 1), get(3, 4, 0, 0)}, 0, porcupine.Illegal},
		{"stale read still caught", []porcupine.Operation{put(0, pending, 7, 0), put(1, 2, 8, 1), get(3, 4, 0, 0)}, 1, porcupine.Illegal},
	} {
		got, dropped := resolvePending(c.ops)
		res := porcupine.CheckOperationsTimeout(policyModel, got, 5*time.Second)
		if dropped != c.wantDropped || res != c.want {
			t.Errorf("%s: %d dropped, %s; want %d, %s", c.name, dropped, res, c.wantDropped, c.want)
		}
	}
}

// pending is the return time of an operation whose outcome is unknown.
const pending = math.MaxInt64

// The policy register.
type (
	polState struct {
		Version uint64
		Marker  int64
	}
	polInput struct {
		Put    bool
		Marker int64
	}
	polOutput struct {
		Version uint64
		Marker  int64
		Unknown bool
	}
)

var policyModel = porcupine.Model{
	Init: func() any { return polState{} }, // replaced by the state read before the run
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(polState), input.(polInput), output.(polOutput)
		if in.Put {
			// Versions only grow. (The leader gives a write the next
			// one, but asking for exactly +1 would make each pending
			// write never seen a free choice for the checker — minutes
			// of search with a dozen; resolvePending leaves none.)
			return !out.Unknown && out.Version > s.Version, polState{Version: out.Version, Marker: in.Marker}
		}
		return out.Version == s.Version && out.Marker == s.Marker, s
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(polInput), output.(polOutput)
		switch {
		case in.Put && out.Unknown:
			return fmt.Sprintf("put(%d) -> ?", in.Marker)
		case in.Put:
			return fmt.Sprintf("put(%d) -> v%d", in.Marker, out.Version)
		}
		return fmt.Sprintf("get() -> v%d %d", out.Version, out.Marker)
	},
	DescribeOperationMetadata: linDescribeMeta,
	DescribeState: func(state any) string {
		s := state.(polState)
		return fmt.Sprintf("v%d %d", s.Version, s.Marker)
	},
}

// The token set, per token (marker).
const (
	tokAbsent = iota
	tokActive
	tokRevoked
)

type (
	tokInput struct {
		Op     string // create, revoke, read
		Marker int
	}
	tokOutput struct {
		State   int // read: what the list showed
		Unknown bool
	}
)

var tokenModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[int][]porcupine.Operation{}
		var keys []int
		for _, op := range h {
			m := op.Input.(tokInput).Marker
			if _, ok := by[m]; !ok {
				keys = append(keys, m)
			}
			by[m] = append(by[m], op)
		}
		sort.Ints(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() any { return tokAbsent },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(int), input.(tokInput), output.(tokOutput)
		switch in.Op {
		case "create":
			return s == tokAbsent, tokActive
		case "revoke":
			return s == tokActive, tokRevoked
		}
		return out.State == s, s
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(tokInput), output.(tokOutput)
		if in.Op == "read" {
			return fmt.Sprintf("list() -> %d:%s", in.Marker, tokStateName(out.State))
		}
		if out.Unknown {
			return fmt.Sprintf("%s(%d) -> ?", in.Op, in.Marker)
		}
		return fmt.Sprintf("%s(%d) -> ok", in.Op, in.Marker)
	},
	DescribeOperationMetadata: linDescribeMeta,
	DescribeState:             func(state any) string { return tokStateName(state.(int)) },
}

// linDescribeMeta names the member an operation was sent to.
func linDescribeMeta(info any) string {
	s, _ := info.(string)
	return s
}

func tokStateName(s int) string {
	return [...]string{"absent", "active", "revoked"}[s]
}

// linHistory is what the clients record; the token lists are kept whole
// and turned into per-token reads once every marker is known.
type linHistory struct {
	start time.Time
	mu    sync.Mutex
	pol   []porcupine.Operation
	tok   []porcupine.Operation
	lists []tokList
	// acked creates: marker → token id; acked revokes: marker.
	created map[int]string
	revoked map[int]bool
	// every policy write that may have taken effect: marker → acked.
	polWrites map[int64]bool
	ackedVers map[uint64]int64 // version → marker of the acked write
	counts    map[string]int
}

type tokList struct {
	client    int
	member    string // the member asked
	call, ret int64
	byMarker  map[int]int
	listed    []listedToken
	badStates []string
}

type listedToken struct {
	marker int
	id     string
}

func (h *linHistory) now() int64 { return int64(time.Since(h.start)) }

func (h *linHistory) count(what string) {
	h.mu.Lock()
	h.counts[what]++
	h.mu.Unlock()
}

// alive reports whether the member's process is running (paused counts).
func (m *haMember) alive() bool {
	select {
	case <-m.p.done:
		return false
	default:
		return true
	}
}

// linClient talks HTTP to the members' admin APIs.
type linClient struct {
	hc     *http.Client
	token  string
	admins []string
}

func (c *linClient) do(method, admin, path string, body, out any) (int, error) {
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequest(method, "http://"+admin+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 && out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			// The answer came but cannot be read: as if cut off.
			return 0, fmt.Errorf("decoding %s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// linDriver performs the recorded operations: each records its call and
// return (or pending) in the history.
type linDriver struct {
	h        *linHistory
	c        *linClient
	baseline map[string]bool // tokens from before the run
}

func memberName(at int) string { return fmt.Sprintf("mmc%d", at+1) }

// putPolicy writes marker (unique) as the policy's cooldown at member at.
func (d *linDriver) putPolicy(client, at int, marker int64) linOutcome {
	h := d.h
	p := policy.Default()
	p.Cooldown = policy.Duration(time.Duration(marker) * time.Second)
	var got policy.Policy
	call := h.now()
	status, err := d.c.do(http.MethodPut, d.c.admins[at], "/v1/policy", p, &got)
	ret := h.now()
	o := linClassify(status, err)
	h.mu.Lock()
	defer h.mu.Unlock()
	op := porcupine.Operation{ClientId: client, Metadata: memberName(at), Input: polInput{Put: true, Marker: marker}, Call: call}
	switch o {
	case linOK:
		if time.Duration(got.Cooldown) != time.Duration(marker)*time.Second {
			h.counts["policy put answered with another document"]++
		}
		op.Output, op.Return = polOutput{Version: got.Version, Marker: marker}, ret
		h.pol = append(h.pol, op)
		h.polWrites[marker] = true
		if _, dup := h.ackedVers[got.Version]; dup {
			h.counts["policy version handed out twice"]++
		}
		h.ackedVers[got.Version] = marker
	case linUnknown:
		op.Output, op.Return = polOutput{Unknown: true}, pending
		h.pol = append(h.pol, op)
		h.polWrites[marker] = false
	}
	h.counts["policy put "+linOutcomeName(o)]++
	return o
}

// getPolicy reads the policy at member at.
func (d *linDriver) getPolicy(client, at int) (policy.Policy, bool) {
	h := d.h
	var got policy.Policy
	call := h.now()
	status, err := d.c.do(http.MethodGet, d.c.admins[at], "/v1/policy", nil, &got)
	ret := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if linClassify(status, err) != linOK {
		h.counts["policy get failed"]++
		return got, false
	}
	h.pol = append(h.pol, porcupine.Operation{ClientId: client, Metadata: memberName(at), Input: polInput{},
		Call: call, Output: polOutput{Version: got.Version, Marker: int64(time.Duration(got.Cooldown) / time.Second)}, Return: ret})
	h.counts["policy get ok"]++
	return got, true
}

// createToken creates a token whose uses are marker (unique) at member
// at; the id is known only when the create was acknowledged.
func (d *linDriver) createToken(client, at, marker int) (string, linOutcome) {
	h := d.h
	var got api.Token
	call := h.now()
	status, err := d.c.do(http.MethodPost, d.c.admins[at], "/v1/tokens", api.TokenRequest{TTL: "1h", Uses: marker}, &got)
	ret := h.now()
	o := linClassify(status, err)
	h.mu.Lock()
	defer h.mu.Unlock()
	op := porcupine.Operation{ClientId: client, Metadata: memberName(at), Input: tokInput{Op: "create", Marker: marker}, Call: call}
	switch o {
	case linOK:
		op.Output, op.Return = tokOutput{}, ret
		h.tok = append(h.tok, op)
		h.created[marker] = got.ID
	case linUnknown:
		op.Output, op.Return = tokOutput{Unknown: true}, pending
		h.tok = append(h.tok, op)
		h.created[marker] = "" // written, id unknown
	}
	h.counts["token create "+linOutcomeName(o)]++
	return got.ID, o
}

// revokeToken revokes the token id (uses marker) at member at.
func (d *linDriver) revokeToken(client, at, marker int, id string) linOutcome {
	h := d.h
	call := h.now()
	status, err := d.c.do(http.MethodPost, d.c.admins[at], "/v1/tokens/"+id+"/revoke", nil, nil)
	ret := h.now()
	o := linClassify(status, err)
	h.mu.Lock()
	defer h.mu.Unlock()
	op := porcupine.Operation{ClientId: client, Metadata: memberName(at), Input: tokInput{Op: "revoke", Marker: marker}, Call: call}
	switch o {
	case linOK:
		op.Output, op.Return = tokOutput{}, ret
		h.tok = append(h.tok, op)
		h.revoked[marker] = true
	case linUnknown:
		op.Output, op.Return = tokOutput{Unknown: true}, pending
		h.tok = append(h.tok, op)
	}
	h.counts["token revoke "+linOutcomeName(o)]++
	return o
}

// listTokens lists the tokens at member at.
func (d *linDriver) listTokens(client, at int) ([]api.TokenInfo, bool) {
	var got []api.TokenInfo
	call := d.h.now()
	status, err := d.c.do(http.MethodGet, d.c.admins[at], "/v1/tokens", nil, &got)
	ret := d.h.now()
	if linClassify(status, err) != linOK {
		d.h.count("token list failed")
		return nil, false
	}
	d.h.addList(client, memberName(at), call, ret, got, d.baseline)
	return got, true
}

// linMarkers hands out a client's unique markers: policy cooldowns in
// seconds, token uses (1..10000, so at most 1500 per client).
type linMarkers struct {
	client       int
	polSeq, tSeq int
}

func (m *linMarkers) policy() int64 { m.polSeq++; return int64(m.client+1)*1_000_000 + int64(m.polSeq) }

func (m *linMarkers) token() (int, bool) {
	if m.tSeq >= 1500 {
		return 0, false
	}
	m.tSeq++
	return m.client*1500 + m.tSeq, true
}

// linRun is one client's loop until stop closes: each operation at a
// member picked at random.
func linRun(d *linDriver, client int, rng *rand.Rand, stop <-chan struct{}) {
	mk := linMarkers{client: client}
	var mine []int // acked, not yet revoked (by this client)
	ids := map[int]string{}
	for {
		select {
		case <-stop:
			return
		default:
		}
		at := rng.IntN(len(d.c.admins))
		switch r := rng.IntN(100); {
		case r < 15:
			d.putPolicy(client, at, mk.policy())
		case r < 40:
			d.getPolicy(client, at)
		case r < 60 || (r < 70 && len(mine) == 0):
			marker, ok := mk.token()
			if !ok {
				continue
			}
			if id, o := d.createToken(client, at, marker); o == linOK {
				mine = append(mine, marker)
				ids[marker] = id
			}
		case r < 70:
			i := rng.IntN(len(mine))
			marker := mine[i]
			mine = append(mine[:i], mine[i+1:]...) // never revoked twice
			if d.revokeToken(client, at, marker, ids[marker]) == linRefused {
				mine = append(mine, marker) // not applied: may be tried again
			}
		default:
			d.listTokens(client, at)
		}
		time.Sleep(time.Duration(2+rng.IntN(10)) * time.Millisecond)
	}
}

func (h *linHistory) addList(client int, member string, call, ret int64, got []api.TokenInfo, baseline map[string]bool) {
	l := tokList{client: client, member: member, call: call, ret: ret, byMarker: map[int]int{}}
	for _, tk := range got {
		if baseline[tk.ID] {
			continue
		}
		st := tokActive
		switch tk.State {
		case "active":
		case "revoked":
			st = tokRevoked
		default:
			l.badStates = append(l.badStates, fmt.Sprintf("token %s listed %s", tk.ID, tk.State))
			continue
		}
		l.byMarker[tk.UsesLeft] = st
		// Matched against the creates once the run is over.
		l.listed = append(l.listed, listedToken{marker: tk.UsesLeft, id: tk.ID})
	}
	h.mu.Lock()
	h.lists = append(h.lists, l)
	h.counts["token list ok"]++
	h.mu.Unlock()
}

func linOutcomeName(o linOutcome) string {
	return [...]string{"ok", "refused", "unknown"}[o]
}

// tokenOps turns every list into one read per token marker written by
// some client, and reports what no model can explain: a token whose
// marker no client wrote, or whose id is not the one its acked create
// returned.
func (h *linHistory) tokenOps() (ops []porcupine.Operation, problems []string) {
	ops = append(ops, h.tok...)
	for _, l := range h.lists {
		problems = append(problems, l.badStates...)
		for _, e := range l.listed {
			want, ok := h.created[e.marker]
			switch {
			case !ok:
				problems = append(problems, fmt.Sprintf("token %s with uses %d, which no client created", e.id, e.marker))
			case want != "" && want != e.id:
				problems = append(problems, fmt.Sprintf("token marker %d listed as %s, created as %s", e.marker, e.id, want))
			}
		}
		for m := range h.created {
			ops = append(ops, porcupine.Operation{ClientId: l.client, Metadata: l.member, Input: tokInput{Op: "read", Marker: m},
				Call: l.call, Output: tokOutput{State: l.byMarker[m]}, Return: l.ret})
		}
	}
	return ops, problems
}

// resolvePending prepares pending policy writes for the model, which
// needs every write's version:
//   - one whose marker some read saw gets the version that read saw
//     with it (the leader stores a document and its version together);
//     its return time stays unknown;
//   - one never seen is dropped (returned: how many): in the model it
//     can take effect only where no read sees it — right before another
//     write, which does not need it, or after everything — so the
//     history is linearizable with it exactly when without it.
func resolvePending(ops []porcupine.Operation) ([]porcupine.Operation, int) {
	seen := map[int64]uint64{}
	for _, op := range ops {
		if o := op.Output.(polOutput); !op.Input.(polInput).Put {
			seen[o.Marker] = o.Version
		}
	}
	var out []porcupine.Operation
	dropped := 0
	for _, op := range ops {
		in, o := op.Input.(polInput), op.Output.(polOutput)
		if in.Put && o.Unknown {
			v, ok := seen[in.Marker]
			if !ok {
				dropped++
				continue
			}
			op.Output = polOutput{Version: v, Marker: in.Marker}
		}
		out = append(out, op)
	}
	return out, dropped
}

// staleReads names the policy reads that returned an older version than
// one acknowledged before they were sent (the plainest kind of illegal
// read, spelled out beside the checker's verdict; at most ten).
func staleReads(ops []porcupine.Operation) []string {
	var out []string
	for _, r := range ops {
		in, o := r.Input.(polInput), r.Output.(polOutput)
		if in.Put {
			continue
		}
		for _, w := range ops {
			win, wo := w.Input.(polInput), w.Output.(polOutput)
			if win.Put && !wo.Unknown && w.Return < r.Call && wo.Version > o.Version {
				out = append(out, fmt.Sprintf("stale read at %v: %s answered v%d, but v%d was acknowledged at %v (by %s)",
					time.Duration(r.Call).Round(time.Millisecond), linDescribeMeta(r.Metadata), o.Version, wo.Version,
					time.Duration(w.Return).Round(time.Millisecond), linDescribeMeta(w.Metadata)))
				break
			}
		}
		if len(out) == 10 {
			break
		}
	}
	return out
}

// staleLists names the token lists that miss a token whose create was
// acknowledged before they were sent, or show it active after its revoke
// was (at most ten).
func (h *linHistory) staleLists() []string {
	var out []string
	for _, l := range h.lists {
		for _, w := range h.tok {
			in, o := w.Input.(tokInput), w.Output.(tokOutput)
			if o.Unknown || w.Return >= l.call {
				continue
			}
			seen := l.byMarker[in.Marker]
			if (in.Op == "create" && seen == tokAbsent) || (in.Op == "revoke" && seen == tokActive) {
				out = append(out, fmt.Sprintf("stale list at %v: %s showed token %d %s, but its %s was acknowledged at %v (by %s)",
					time.Duration(l.call).Round(time.Millisecond), l.member, in.Marker, tokStateName(seen), in.Op,
					time.Duration(w.Return).Round(time.Millisecond), linDescribeMeta(w.Metadata)))
				break
			}
		}
		if len(out) == 10 {
			break
		}
	}
	return out
}

// TestLinearizabilityUnderFailover: five clients, three members, kill -9
// of the leader (restarted as a follower) three times and, between the
// kills, two SIGSTOPs of the leader long enough for the others to elect
// a new one, each with a probe: a write acknowledged by the new leader,
// then reads sent to the paused member, which it answers when it wakes.
// The recorded history must be linearizable, and after the cluster
// settles every member must show every acknowledged write.
func TestLinearizabilityUnderFailover(t *testing.T) {
	c := newHACluster(t)
	tokb, err := os.ReadFile(filepath.Join(c.members[0].dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	var admins []string
	for _, m := range c.members {
		admins = append(admins, m.admin)
	}
	// No keep-alive: a request on a fresh connection to a dead member is
	// refused (certainly not applied) rather than cut off (unknown). The
	// timeout is shorter than a pause, so reads issued late in a pause
	// are answered when the paused member wakes.
	lc := &linClient{hc: &http.Client{Timeout: 2500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}},
		token: strings.TrimSpace(string(tokb)), admins: admins}

	h := &linHistory{start: time.Now(), created: map[int]string{}, revoked: map[int]bool{},
		polWrites: map[int64]bool{}, ackedVers: map[uint64]int64{}, counts: map[string]int{}}
	var p0 policy.Policy
	if st, err := lc.do(http.MethodGet, admins[0], "/v1/policy", nil, &p0); err != nil || st != http.StatusOK {
		t.Fatalf("initial policy: %d %v", st, err)
	}
	init := polState{Version: p0.Version, Marker: int64(time.Duration(p0.Cooldown) / time.Second)}
	var toks0 []api.TokenInfo
	if st, err := lc.do(http.MethodGet, admins[0], "/v1/tokens", nil, &toks0); err != nil || st != http.StatusOK {
		t.Fatalf("initial tokens: %d %v", st, err)
	}
	baseline := map[string]bool{}
	for _, tk := range toks0 {
		baseline[tk.ID] = true
	}

	d := &linDriver{h: h, c: lc, baseline: baseline}
	// Client ids (the visualization's rows): the workers, the probe's
	// writer and its two readers, the final readers.
	const clients = 5
	const probeW, probeP, probeT, finalR = clients, clients + 1, clients + 2, clients + 3
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			linRun(d, i, rand.New(rand.NewPCG(seed, uint64(i))), stop)
		}()
	}
	stopped := false
	stopClients := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopClients()

	// The nemesis, on the test's goroutine (it may fail the test).
	leader := func() int {
		l := -1
		c.waitFor(15*time.Second, "a leader", func() bool {
			for i := range c.members {
				if c.members[i].alive() {
					if l = c.leader(i); l >= 0 {
						return true
					}
				}
			}
			return false
		})
		return l
	}
	var events []string
	var marks []porcupine.Annotation // the nemesis in the visualization
	note := func(f string, a ...any) {
		now, what := h.now(), fmt.Sprintf(f, a...)
		e := fmt.Sprintf("%6.2fs %s", time.Duration(now).Seconds(), what)
		events = append(events, e)
		marks = append(marks, porcupine.Annotation{Tag: "nemesis", Start: now, End: now, Description: what})
		t.Log(e)
	}
	killRestart := func() {
		l := leader()
		note("kill -9 mmc%d (leader)", l+1)
		c.kill(l)
		time.Sleep(3 * time.Second)
		c.start(l)
		note("mmc%d restarted", l+1)
		time.Sleep(1500 * time.Millisecond)
	}
	// The probe's client waits longer than a pause.
	probe := &linDriver{h: h, baseline: baseline, c: &linClient{hc: &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true}}, token: lc.token, admins: admins}}
	probeMarkers := linMarkers{client: probeW}
	// A pause is a partition of a process: the others elect a new leader
	// and take writes; the paused one wakes still believing it leads,
	// with the requests sent to it in the meantime waiting. The probe's
	// reads are sent after a write the new leader acknowledged, so an
	// answer from the woken member's own store is a stale read.
	pause := func() {
		l := leader()
		note("SIGSTOP mmc%d (leader)", l+1)
		pr := c.members[l].p.cmd.Process
		_ = pr.Signal(syscall.SIGSTOP)
		pausedAt := time.Now()
		defer func() { _ = pr.Signal(syscall.SIGCONT) }() // also when the test fails here
		nl := -1
		c.waitFor(10*time.Second, "a new leader", func() bool {
			for i := range c.members {
				if i != l && c.members[i].alive() {
					if nl = c.leader(i); nl >= 0 && nl != l {
						return true
					}
				}
			}
			return false
		})
		note("mmc%d leads", nl+1)
		wrote := false
		for deadline := time.Now().Add(3 * time.Second); !wrote && time.Now().Before(deadline); {
			m, _ := probeMarkers.token()
			_, o1 := probe.createToken(probeW, nl, m)
			o2 := probe.putPolicy(probeW, nl, probeMarkers.policy())
			wrote = o1 == linOK && o2 == linOK
		}
		if !wrote {
			t.Logf("the probe's writes at mmc%d were not acknowledged: its reads prove less", nl+1)
		}
		var reads sync.WaitGroup
		reads.Go(func() { probe.getPolicy(probeP, l) })
		reads.Go(func() { probe.listTokens(probeT, l) })
		time.Sleep(time.Until(pausedAt.Add(4 * time.Second)))
		_ = pr.Signal(syscall.SIGCONT)
		note("SIGCONT mmc%d", l+1)
		reads.Wait()
	}
	time.Sleep(2 * time.Second)
	killRestart()
	pause()
	time.Sleep(1500 * time.Millisecond)
	killRestart()
	pause()
	time.Sleep(1500 * time.Millisecond)
	killRestart()
	stopClients()
	note("clients stopped")

	// Settled: three voters, one leader, none unreachable.
	c.waitFor(30*time.Second, "the cluster settled", func() bool {
		ms, err := c.mmcs(0)
		if err != nil || len(ms) != 3 {
			return false
		}
		leaders := 0
		for _, m := range ms {
			if m.State == "unreachable" {
				return false
			}
			if m.State == "leader" {
				leaders++
			}
		}
		return leaders == 1
	})

	// Final reads from every member, part of the history too.
	finalToks := make([][]api.TokenInfo, len(c.members))
	finalPol := make([]policy.Policy, len(c.members))
	for i := range c.members {
		var ok bool
		if finalPol[i], ok = d.getPolicy(finalR+i, i); !ok {
			t.Fatalf("final policy read at mmc%d failed", i+1)
		}
		if finalToks[i], ok = d.listTokens(finalR+i, i); !ok {
			t.Fatalf("final token list at mmc%d failed", i+1)
		}
	}

	var keys []string
	for k := range h.counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var summary []string
	for _, k := range keys {
		summary = append(summary, fmt.Sprintf("%s %d", k, h.counts[k]))
	}
	t.Logf("history: %s", strings.Join(summary, ", "))

	// No acknowledged write lost, said plainly.
	for i := range c.members {
		byID := map[string]api.TokenInfo{}
		for _, tk := range finalToks[i] {
			byID[tk.ID] = tk
		}
		for m, id := range h.created {
			if id == "" {
				continue
			}
			tk, ok := byID[id]
			switch {
			case !ok:
				t.Errorf("mmc%d: acknowledged token %s (uses %d) missing", i+1, id, m)
			case h.revoked[m] && tk.State != "revoked":
				t.Errorf("mmc%d: acknowledged revoke of %s not applied: %s", i+1, id, tk.State)
			}
		}
		maxAcked := uint64(0)
		for v := range h.ackedVers {
			maxAcked = max(maxAcked, v)
		}
		if finalPol[i].Version < maxAcked {
			t.Errorf("mmc%d: policy at v%d, but v%d was acknowledged", i+1, finalPol[i].Version, maxAcked)
		}
		final := int64(time.Duration(finalPol[i].Cooldown) / time.Second)
		if _, ok := h.polWrites[final]; !ok && finalPol[i].Version != init.Version {
			t.Errorf("mmc%d: policy marker %d was never written", i+1, final)
		}
	}
	if n := h.counts["policy version handed out twice"]; n > 0 {
		t.Errorf("%d policy versions acknowledged to two writes (a lost write)", n)
	}
	if n := h.counts["policy put answered with another document"]; n > 0 {
		t.Errorf("%d policy writes answered with a document other than the one written", n)
	}

	tokOps, problems := h.tokenOps()
	for _, p := range problems {
		t.Error(p)
	}
	pm := policyModel
	pm.Init = func() any { return init }
	var dropped int
	h.pol, dropped = resolvePending(h.pol)
	t.Logf("policy: %d pending writes never seen, dropped", dropped)
	for _, chk := range []struct {
		name  string
		model porcupine.Model
		ops   []porcupine.Operation
	}{{"policy", pm, h.pol}, {"tokens", tokenModel, tokOps}} {
		start := time.Now()
		res, info := porcupine.CheckOperationsVerbose(chk.model, chk.ops, 15*time.Second)
		t.Logf("%s: %d operations, %s in %v", chk.name, len(chk.ops), res, time.Since(start).Round(time.Millisecond))
		if res == porcupine.Ok {
			continue
		}
		t.Errorf("%s history: %s (nemesis: %s)", chk.name, res, strings.Join(events, "; "))
		if chk.name == "policy" {
			for _, s := range staleReads(h.pol) {
				t.Log(s)
			}
		} else {
			for _, s := range h.staleLists() {
				t.Log(s)
			}
		}
		info.AddAnnotations(marks)
		// FERRY_E2E_LOGS (a directory) keeps it past the test, as the
		// processes' logs.
		dir := os.Getenv("FERRY_E2E_LOGS")
		if !filepath.IsAbs(dir) {
			dir = t.TempDir()
		}
		f := filepath.Join(dir, chk.name+"-linearizability.html")
		if err := porcupine.VisualizePath(chk.model, info, f); err != nil {
			t.Logf("visualization: %v", err)
		} else {
			t.Logf("%s visualization: %s", chk.name, f)
		}
	}
}
