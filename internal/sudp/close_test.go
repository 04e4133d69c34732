package sudp

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// Dials racing Close: every dial either fails with ErrEndpointClosed or
// started before Close and is closed by it, Close returns, and a dial
// after it fails. (The race this guards — a dial adding to the
// endpoint's goroutines while Close waits for them — needs the dial to
// hold the lock across Close's whole shutdown: too narrow to hit on
// demand; the MMC's cluster tests met it once under -race.)
func TestDialRacingClose(t *testing.T) {
	srvKey, cliKey, psk := genKey(t), genKey(t), [32]byte{5}
	srv := newServer(t, Config{Static: srvKey}, psk, cliKey)
	for range 20 {
		cli, err := Listen(Config{Listen: "127.0.0.1:0", Static: cliKey, ClusterID: "test"})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				for ctx.Err() == nil {
					c, err := cli.Dial(ctx, srv.LocalAddr().String(), pub(srvKey), psk)
					if errors.Is(err, ErrEndpointClosed) {
						return
					}
					if err == nil {
						c.Close()
					}
				}
			}()
		}
		close(start)
		time.Sleep(time.Millisecond)
		if err := cli.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if _, err := cli.Dial(context.Background(), srv.LocalAddr().String(), pub(srvKey), psk); !errors.Is(err, ErrEndpointClosed) {
			t.Fatalf("a dial after Close: %v", err)
		}
	}
}
