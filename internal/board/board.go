// Package board is the MMC's blackboard (paper §2): topics on which the
// agents taking part in a job (a migration's source and destination MA)
// post typed entries — phase changes, progress, connection events — that
// the MMC records and relays to the topic's other members. The MMC opens a
// topic with its members; only members may post or read; every entry kind
// has a schema and a malformed or unknown one is refused.
//
// The board does no I/O: the MMC's session loops feed it and deliver what
// it returns.
package board

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Errors returned by Post and Read.
var (
	ErrNoTopic     = errors.New("board: no such topic")
	ErrNotMember   = errors.New("board: not a member of the topic")
	ErrUnknownKind = errors.New("board: unknown entry kind")
	ErrMalformed   = errors.New("board: malformed entry")
	ErrClosed      = errors.New("board: topic closed")
)

// MMC is the From of entries the MMC itself posts.
const MMC = "mmc"

// Entry is one recorded entry.
type Entry struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	From string    `json:"from"`
	Kind string    `json:"kind"`
	Body []byte    `json:"-"` // CBOR of the kind's type
}

// Config bounds the board's memory.
type Config struct {
	MaxTopics  int // closed topics beyond this are forgotten, oldest first (default 1000)
	MaxEntries int // per topic; older entries are dropped (default 1024)
}

type topic struct {
	members []string
	entries []Entry
	next    uint64
	closed  bool
}

// Board holds the topics. It is safe for concurrent use.
type Board struct {
	cfg    Config
	mu     sync.Mutex
	topics map[string]*topic
	closed []string // closed topics, oldest first
}

// New returns an empty board.
func New(cfg Config) *Board {
	if cfg.MaxTopics <= 0 {
		cfg.MaxTopics = 1000
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 1024
	}
	return &Board{cfg: cfg, topics: map[string]*topic{}}
}

// Open creates a topic (or reopens it with new members, keeping its
// entries: a migration resumed after an MMC restart).
func (b *Board) Open(name string, members ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topics[name]
	if t == nil {
		t = &topic{}
		b.topics[name] = t
	}
	if t.closed {
		t.closed = false
		b.closed = slices.DeleteFunc(b.closed, func(s string) bool { return s == name })
	}
	t.members = slices.Clone(members)
}

// Close ends posting on a topic; its entries stay readable until
// MaxTopics newer topics have closed.
func (b *Board) Close(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topics[name]
	if t == nil || t.closed {
		return
	}
	t.closed = true
	b.closed = append(b.closed, name)
	for len(b.closed) > b.cfg.MaxTopics {
		delete(b.topics, b.closed[0])
		b.closed = b.closed[1:]
	}
}

// Post records an entry from a member (or from MMC) after checking its
// kind and body, and returns it with the members it must be relayed to.
func (b *Board) Post(from, name, kind string, body []byte, now time.Time) (Entry, []string, error) {
	if err := Check(kind, body); err != nil {
		return Entry{}, nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topics[name]
	if t == nil {
		return Entry{}, nil, fmt.Errorf("%w: %s", ErrNoTopic, name)
	}
	if from != MMC && !slices.Contains(t.members, from) {
		return Entry{}, nil, fmt.Errorf("%w: %s", ErrNotMember, name)
	}
	if t.closed {
		return Entry{}, nil, fmt.Errorf("%w: %s", ErrClosed, name)
	}
	t.next++
	e := Entry{Seq: t.next, Time: now, From: from, Kind: kind, Body: slices.Clone(body)}
	t.entries = append(t.entries, e)
	if len(t.entries) > b.cfg.MaxEntries {
		t.entries = slices.Delete(t.entries, 0, len(t.entries)-b.cfg.MaxEntries)
	}
	var to []string
	for _, m := range t.members {
		if m != from {
			to = append(to, m)
		}
	}
	return e, to, nil
}

// Read returns a topic's entries with Seq > after. who is a member's id,
// or "" for the administrator.
func (b *Board) Read(who, name string, after uint64) ([]Entry, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topics[name]
	if t == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoTopic, name)
	}
	if who != "" && !slices.Contains(t.members, who) {
		return nil, fmt.Errorf("%w: %s", ErrNotMember, name)
	}
	i, _ := slices.BinarySearchFunc(t.entries, after+1, func(e Entry, seq uint64) int {
		switch {
		case e.Seq < seq:
			return -1
		case e.Seq > seq:
			return 1
		}
		return 0
	})
	return slices.Clone(t.entries[i:]), nil
}

// Topics lists the topics, open ones first, each in name order.
func (b *Board) Topics() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var open, closed []string
	for n, t := range b.topics {
		if t.closed {
			closed = append(closed, n)
		} else {
			open = append(open, n)
		}
	}
	slices.Sort(open)
	slices.Sort(closed)
	return append(open, closed...)
}
