package board

import (
	"fmt"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
)

// Entry kinds. Each has a body type; Check decodes against it.
const (
	// KindPeerConnected: the two agents of a job opened their direct
	// connection.
	KindPeerConnected = "peer.connected"
	// KindNote: free text for operators (e.g. why a phase took long).
	KindNote = "note"
	// KindMigrationPhase: a migration agent's job changed phase.
	KindMigrationPhase = "migration.phase"
	// KindMigrationProgress: a migration agent's periodic progress.
	KindMigrationProgress = "migration.progress"
)

// PeerConnected is the body of KindPeerConnected.
type PeerConnected struct {
	Peer string `cbor:"1,keyasint" json:"peer"` // the other agent's id
	Addr string `cbor:"2,keyasint" json:"addr"` // its address as this side sees it
	RTT  int64  `cbor:"3,keyasint" json:"rtt_us"`
}

func (p *PeerConnected) check() error {
	if err := identity.CheckLabel(p.Peer, 128); err != nil {
		return err
	}
	return identity.CheckLabel(p.Addr, 128)
}

// Note is the body of KindNote.
type Note struct {
	Text string `cbor:"1,keyasint" json:"text"`
}

func (n *Note) check() error { return identity.CheckLabel(n.Text, 1024) }

// MigrationPhase is the body of KindMigrationPhase.
type MigrationPhase struct {
	Role  migration.Role  `cbor:"1,keyasint" json:"role"`
	Phase migration.Phase `cbor:"2,keyasint" json:"phase"`
	Error string          `cbor:"3,keyasint,omitempty" json:"error,omitempty"`
}

func (p *MigrationPhase) check() error {
	if p.Role != migration.Source && p.Role != migration.Destination {
		return fmt.Errorf("role %q", p.Role)
	}
	if err := identity.CheckLabel(string(p.Phase), 32); err != nil {
		return err
	}
	return identity.CheckLabel(p.Error, 1024)
}

// MigrationProgress is the body of KindMigrationProgress (the source's
// figures; see hypervisor.MigrationStatus).
type MigrationProgress struct {
	Round            int     `cbor:"1,keyasint" json:"round"`
	Total            uint64  `cbor:"2,keyasint" json:"total"`
	Remaining        uint64  `cbor:"3,keyasint" json:"remaining"`
	Transferred      uint64  `cbor:"4,keyasint" json:"transferred"`
	WireBytes        uint64  `cbor:"5,keyasint" json:"wire_bytes"`
	DirtyRate        float64 `cbor:"6,keyasint" json:"dirty_rate"`
	Rate             float64 `cbor:"7,keyasint" json:"rate"`
	ExpectedDowntime int64   `cbor:"8,keyasint" json:"expected_downtime_us"`
	Throttle         float64 `cbor:"9,keyasint" json:"throttle"`
}

type kind struct {
	decode func([]byte) (any, error)
}

func kindOf[T any]() kind {
	return kind{decode: func(b []byte) (any, error) {
		v, err := message.DecodeBody[T](b)
		if err != nil {
			return nil, err
		}
		// message.DecodeBody only sees check methods of its own package's
		// types (unexported method names are package-scoped).
		if c, ok := any(&v).(interface{ check() error }); ok {
			if err := c.check(); err != nil {
				return nil, err
			}
		}
		return v, nil
	}}
}

var kinds = map[string]kind{
	KindPeerConnected: kindOf[PeerConnected](),
	KindNote:          kindOf[Note](),

	KindMigrationPhase:    kindOf[MigrationPhase](),
	KindMigrationProgress: kindOf[MigrationProgress](),
}

// Check validates an entry's body against its kind's schema.
func Check(k string, body []byte) error {
	_, err := Decode(k, body)
	return err
}

// Decode returns an entry body as its kind's type (for display and for
// the MMC's orchestrator).
func Decode(k string, body []byte) (any, error) {
	kd, ok := kinds[k]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownKind, k)
	}
	v, err := kd.decode(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, k, err)
	}
	return v, nil
}
