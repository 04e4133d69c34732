package lab

import (
	"encoding/json"
	"testing"
)

func TestDiffAndStatus(t *testing.T) {
	var a, b Status
	if err := json.Unmarshal([]byte(`{"name":"x","sites":[{"name":"a","netns":"x-a","addr":"198.18.0.1"},{"name":"b","netns":"x-b","addr":"198.18.1.1"}],
		"link":{"ab":{"enqueued":10,"delivered":9,"delivered_bytes":9000,"dropped_loss":1},"ba":{"enqueued":5,"delivered":5,"delivered_bytes":300},
		"config":{"ab":{"delay":"25ms","loss":0.01,"rate_bps":1e8}},"updated":"2026-01-01T00:00:00Z"}}`), &a); err != nil {
		t.Fatal(err)
	}
	b = a
	b.Link.AB = Counters{Enqueued: 1010, Delivered: 909, DroppedLoss: 51, DroppedQueue: 50}
	b.Link.AB.DeliveredBytes = 9000 + 900*1000
	d := Diff(a, b)
	if d.AB.Packets != 1000 || d.AB.Delivered != 900 || d.AB.DroppedLoss != 50 || d.AB.DroppedQueue != 50 {
		t.Fatalf("%+v", d.AB)
	}
	// 1000 packets offered at a mean size of 1000 bytes.
	if d.AB.WireBytes != 1000*1000 || !d.Settled || d.BA.Packets != 0 {
		t.Fatalf("%+v", d)
	}
	if a.Link.Config.AB.Delay != "25ms" || a.Sites[1].Netns != "x-b" {
		t.Fatalf("%+v", a)
	}
	if UniqueName(123, 1) != "bw123b" {
		t.Fatal(UniqueName(123, 1))
	}
}
