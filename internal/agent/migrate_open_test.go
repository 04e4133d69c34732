package agent

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A second prepare or start of a migration (a new MMC leader repeating
// its predecessor's last order) waits for the first to end instead of
// setting up a second transfer beside it; other migrations do not wait,
// and a waiter gives up with its context.
func TestOpenSerialisesAMigrationsSetup(t *testing.T) {
	var m migrations
	ctx := context.Background()
	done1, err := m.open(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	other, err := m.open(ctx, "m2")
	if err != nil {
		t.Fatal(err)
	}
	other()

	got := make(chan error, 1)
	go func() {
		done2, err := m.open(ctx, "m1")
		if err == nil {
			done2()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a second set-up of m1 went ahead beside the first (err %v)", err)
	case <-time.After(50 * time.Millisecond):
	}

	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := m.open(short, "m1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a waiter whose context ended: %v", err)
	}

	done1()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second set-up still waits after the first ended")
	}
	m.mu.Lock()
	left := len(m.opening)
	m.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d claims left after both ended", left)
	}
}
