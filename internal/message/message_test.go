package message

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/migration"
)

func TestRoundTrip(t *testing.T) {
	req := EnrolRequest{Facts: identity.Facts{Hostname: "h1", MACs: []string{"02:00:00:00:00:01"}, DiskID: "d"}, Name: "h1", Site: "a", Token: "fjt1.x"}
	b, err := Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := Marshal(req)
	if !bytes.Equal(b, b2) {
		t.Fatal("encoding is not deterministic")
	}
	e, err := Unmarshal(b)
	if err != nil || e.Type != TypeEnrolRequest {
		t.Fatal(e.Type, err)
	}
	got, err := Decode[EnrolRequest](e)
	if err != nil || got.Name != "h1" || got.Facts.DiskID != "d" || got.Token != "fjt1.x" {
		t.Fatalf("%+v %v", got, err)
	}
}

func TestRejects(t *testing.T) {
	good, _ := Marshal(Challenge{Seq: 1, Nonce: make([]byte, identity.NonceLen)})
	badNonce, _ := Marshal(Challenge{Seq: 1, Nonce: make([]byte, 3)})
	noHost, _ := Marshal(EnrolRequest{})
	key := make([]byte, 32)
	noMembers, _ := Marshal(Members{Version: 1})
	shortKey, _ := Marshal(Members{Version: 1, MMCs: []Member{{Addr: "10.0.0.1:7400", Key: key[:31]}}})
	noAddr, _ := Marshal(Members{Version: 1, MMCs: []Member{{Key: key}}})
	tooMany, _ := Marshal(Members{Version: 1, MMCs: make([]Member, MaxMembers+1)})
	badLeader, _ := Marshal(Redirect{Leader: Member{Addr: "10.0.0.1:7400"}})
	decMembers := func(e Envelope) error { _, err := Decode[Members](e); return err }
	joinNoToken, _ := Marshal(JoinRequest{Addr: "10.0.2.1:7946"})
	replyShortSecret, _ := Marshal(JoinReply{ClusterSecret: key[:16], ID: "m3", Members: []ClusterMember{{ID: "m1", Addr: "a:1", Key: key}}})
	replyBadMember, _ := Marshal(JoinReply{ClusterSecret: key, ID: "m3", Members: []ClusterMember{{ID: "m1", Addr: "a:1", Key: key[:5]}}})
	decReply := func(e Envelope) error { _, err := Decode[JoinReply](e); return err }
	v2 := bytes.Clone(good)
	v2[2] = 2 // envelope version field: {1: 1, ...} → {1: 2, ...}
	tests := []struct {
		name string
		b    []byte
		dec  func(Envelope) error
	}{
		{"empty", nil, nil},
		{"garbage", []byte{0xff, 0x00, 0x13}, nil},
		{"truncated", good[:len(good)-2], nil},
		{"future version", v2, nil},
		{"oversized", make([]byte, MaxSize+1), nil},
		{"short nonce", badNonce, func(e Envelope) error { _, err := Decode[Challenge](e); return err }},
		{"enrolment without hostname", noHost, func(e Envelope) error { _, err := Decode[EnrolRequest](e); return err }},
		{"empty member list", noMembers, decMembers},
		{"member key of 31 bytes", shortKey, decMembers},
		{"member without address", noAddr, decMembers},
		{"too many members", tooMany, decMembers},
		{"redirect without key", badLeader, func(e Envelope) error { _, err := Decode[Redirect](e); return err }},
		{"join request without token", joinNoToken, func(e Envelope) error { _, err := Decode[JoinRequest](e); return err }},
		{"join reply with a 16-byte secret", replyShortSecret, decReply},
		{"join reply with a short member key", replyBadMember, decReply},
	}
	for _, tt := range tests {
		e, err := Unmarshal(tt.b)
		if err == nil && tt.dec != nil {
			err = tt.dec(e)
		}
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", tt.name, err)
		}
	}
	if e, err := Unmarshal(good); err != nil {
		t.Fatal(err)
	} else if _, err := Decode[Challenge](e); err != nil {
		t.Fatal(err)
	}
}

// FuzzUnmarshal: no input crashes the decoder, and whatever decodes
// re-encodes to a message that decodes to the same type.
func decodeAs[T any](e Envelope) error { _, err := Decode[T](e); return err }

// decoders decodes every message type, for the fuzzer.
var decoders = map[Type]func(Envelope) error{
	TypeEnrolRequest:    decodeAs[EnrolRequest],
	TypeEnrolReply:      decodeAs[EnrolReply],
	TypeEnrolAck:        decodeAs[EnrolAck],
	TypeHello:           decodeAs[Hello],
	TypeWelcome:         decodeAs[Welcome],
	TypeRefused:         decodeAs[Refused],
	TypeChallenge:       decodeAs[Challenge],
	TypeChallengeAnswer: decodeAs[ChallengeAnswer],
	TypeTimeRequest:     decodeAs[TimeRequest],
	TypeTimeReply:       decodeAs[TimeReply],
	TypeReport:          decodeAs[Report],
	TypeAction:          decodeAs[Action],
	TypeActionResult:    decodeAs[ActionResult],
	TypePolicy:          decodeAs[Policy],
	TypePolicyAck:       decodeAs[PolicyAck],
	TypeEvent:           decodeAs[Event],
	TypeEventAck:        decodeAs[EventAck],
	TypeBoardPost:       decodeAs[BoardPost],
	TypeBoardEntry:      decodeAs[BoardEntry],
	TypeBoardRead:       decodeAs[BoardRead],
	TypePeerHello:       decodeAs[PeerHello],
	TypeMembers:         decodeAs[Members],
	TypeRedirect:        decodeAs[Redirect],
	TypeJoinRequest:     decodeAs[JoinRequest],
	TypeJoinReply:       decodeAs[JoinReply],
	TypeJoinReady:       decodeAs[JoinReady],
	TypeJoinDone:        decodeAs[JoinDone],
	TypeLeader:          decodeAs[Leader],
}

func TestEveryTypeHasADecoder(t *testing.T) {
	for ty := Type(1); ty < 64; ty++ {
		if !strings.HasPrefix(ty.String(), "type-") && decoders[ty] == nil {
			t.Errorf("%v has no fuzz decoder", ty)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	for _, m := range []struct {
		t Type
		v Body
	}{
		{TypeEnrolRequest, EnrolRequest{Facts: identity.Facts{Hostname: "h", IPs: []string{"10.0.0.1"}}, Token: "t"}},
		{TypeEnrolReply, EnrolReply{State: "approved", Code: make([]byte, 32)}},
		{TypeHello, Hello{Facts: identity.Facts{Hostname: "h"}}},
		{TypeChallenge, Challenge{Seq: 9, Nonce: make([]byte, 32)}},
		{TypeChallengeAnswer, ChallengeAnswer{Seq: 9, MAC: make([]byte, 32)}},
		{TypeTimeReply, TimeReply{T1: 1, T2: 2, T3: 3}},
		{TypeReport, Report{Time: 1, VMs: []VMReport{{}}}},
		{TypeAction, Action{ID: 1, Op: "peer.dial", Intro: &Introduction{Topic: "migration/m1", PeerKey: make([]byte, 32), Ticket: make([]byte, 32)}}},
		{TypeAction, Action{ID: 2, Op: "peer.withdraw", Withdraw: &Withdrawal{PeerID: "0123456789abcdef", PeerKey: make([]byte, 32)}}},
		{TypeAction, Action{ID: 3, Op: "vm.resume", VM: "v1", Term: 7}},
		{TypeMembers, Members{Version: 3, MMCs: []Member{{Addr: "10.0.0.1:7400", Key: make([]byte, 32)}, {Addr: "10.0.1.1:7400", Key: make([]byte, 32)}}}},
		{TypeRedirect, Redirect{Leader: Member{Addr: "10.0.1.1:7400", Key: make([]byte, 32)}}},
		{TypeEvent, Event{Seq: 1, Kind: "k", Level: "info", Message: "m"}},
		{TypeJoinRequest, JoinRequest{Token: "id.secret", Addr: "10.0.2.1:7946", Admin: "https://10.0.2.1:7947"}},
		{TypeJoinReply, JoinReply{ClusterSecret: make([]byte, 32), AdminToken: "ab", ID: "m3", CatchUp: 9, Members: []ClusterMember{{ID: "m1", Addr: "10.0.0.1:7946", Key: make([]byte, 32)}}}},
		{TypeJoinReady, JoinReady{Applied: 9}},
		{TypeLeader, Leader{Leader: Member{Addr: "10.0.1.1:7400", Key: make([]byte, 32)}}},
		{TypeHello, Hello{Facts: identity.Facts{Hostname: "h"}, Standby: true}},
		{TypeBoardPost, BoardPost{Topic: "migration/m1", Kind: "peer.connected", Body: []byte{0xa0}}},
		{TypeBoardEntry, BoardEntry{Topic: "migration/m1", Seq: 1, Kind: "peer.connected"}},
	} {
		b, _ := Marshal(m.v)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Unmarshal(b)
		if err != nil {
			return
		}
		var derr error
		if dec := decoders[e.Type]; dec != nil {
			derr = dec(e)
		}
		if derr != nil && !errors.Is(derr, ErrMalformed) {
			t.Fatalf("decode error not wrapped: %v", derr)
		}
	})
}

// An order's term survives the wire, and an action without one (from an
// MMC that predates fencing) decodes as term 0.
func TestActionTerm(t *testing.T) {
	for _, term := range []uint64{0, 1, 1 << 40} {
		b, err := Marshal(Action{ID: 1, Op: "vm.delete", VM: "v", Term: term})
		if err != nil {
			t.Fatal(err)
		}
		e, err := Unmarshal(b)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode[Action](e)
		if err != nil || got.Term != term {
			t.Fatalf("term %d: got %+v, %v", term, got, err)
		}
	}
}

// Times keep their sub-second part across the wire (a migration's downtime
// is the difference of two of them).
func TestTimePrecision(t *testing.T) {
	at := time.Date(2026, 11, 26, 2, 30, 0, 123456789, time.UTC)
	b, err := Marshal(ActionResult{ID: 1, OK: true, Mig: &migration.Report{Status: hypervisor.MigrationStatus{PausedAt: at}}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Decode[ActionResult](e)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Mig.Status.PausedAt; !got.Equal(at) {
		t.Fatalf("paused_at %v after the wire, want %v", got, at)
	}
}

// A report holding a NaN or an infinity is refused at decoding: no honest
// agent measures one, and the MMC's JSON views cannot hold one.
func TestRejectsNonFinite(t *testing.T) {
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		b, err := Marshal(Report{Time: 1, Host: HostStats{CPU: v}})
		if err != nil {
			t.Fatal(err)
		}
		e, err := Unmarshal(b)
		if err == nil {
			_, err = Decode[Report](e)
		}
		if err == nil {
			t.Errorf("a report with CPU %v was accepted", v)
		}
	}
	b, _ := Marshal(Report{Time: 1, Host: HostStats{CPU: 0.5}})
	e, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := Decode[Report](e); err != nil || r.Host.CPU != 0.5 {
		t.Fatalf("a finite report: %+v %v", r, err)
	}
}
