// Package fence decides whether an agent obeys an order from the MMC,
// by the term of the leader that gave it (issue 18: a deposed leader
// behind a partition must not be able to resume or delete a VM).
//
// Every MMC→agent order (message.Action, every op) carries the term of
// the leader that sent it. An agent remembers the highest term it has
// obeyed — persisted before it acts, so a crash cannot forget it — and
// refuses orders from a lower term: once it has obeyed a newer leader, an
// older one can no longer change anything on its host.
//
// Term 0 is an MMC that predates fencing. An agent obeys it only while
// it has never obeyed a fenced order: an upgraded agent keeps working
// with an old MMC, and once any MMC with a term has ordered it, an
// unfenced one never can again. A single MMC without raft sends term 1
// (it cannot be deposed); raft terms start at 1 and only grow, so growing
// a single MMC into a cluster keeps the agents obeying.
package fence

import "fmt"

// Decide says whether an order stamped with term may be obeyed by an
// agent whose highest obeyed term is highest, and what the highest is
// once it is obeyed. Equal terms are the same leader: obeyed.
func Decide(highest, term uint64) (obey bool, next uint64) {
	if term < highest || (term == 0 && highest > 0) {
		return false, highest
	}
	return true, term
}

// RefusedError is the result of an order refused by Decide.
type RefusedError struct {
	Term, Highest uint64
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("fenced: the order's term %d is below term %d already obeyed (a deposed MMC leader?)", e.Term, e.Highest)
}
