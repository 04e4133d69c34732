package mmc

import (
	"context"
	"errors"
	"testing"
	"time"
)

// One introduction of a pair at a time, in either order; other pairs
// are not held up; a waiter gives up with its context.
func TestPairLocks(t *testing.T) {
	var p pairLocks
	ctx := context.Background()
	release, err := p.acquire(ctx, "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	other, err := p.acquire(ctx, "a", "c")
	if err != nil {
		t.Fatal("another pair waited:", err)
	}
	other()
	got := make(chan struct{})
	go func() {
		r, err := p.acquire(ctx, "b", "a") // the same pair, reversed
		if err == nil {
			close(got)
			r()
		}
	}()
	select {
	case <-got:
		t.Fatal("the same pair acquired twice")
	case <-time.After(50 * time.Millisecond):
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := p.acquire(short, "a", "b"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiter past its context: %v", err)
	}
	release()
	select {
	case <-got:
	case <-time.After(time.Second):
		t.Fatal("the waiter did not get the pair after the release")
	}
}
