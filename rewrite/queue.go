package rewrite

import "github.com/pgmoat/pgmoat/policy"

// entryKind is the kind of message an expected reply answers.
type entryKind uint8

const (
	kParse entryKind = iota
	kBind
	kDescribe
	kExecute
	kClose
	kSync    // answered by ReadyForQuery
	kQuery   // Query or FunctionCall: results, then ReadyForQuery
	kCopyEnd // the client's CopyDone/CopyFail: no reply; marks the end of COPY data
)

// entry is the expected reply to one message sent upstream.
type entry struct {
	kind     entryKind
	injected bool     // pgmoat's own message: swallow its replies
	fail     *failure // pgmoat's failing statement: replace its marker error
	target   byte     // Describe/Close: 'S' or 'P'
	name     string   // Close: the name to forget once the server confirms
	inCopy   bool     // Sync sent while the client may be in COPY: ignored by a server in COPY
	gen      uint32   // injected Parse: the Session.prepGen it was sent in

	// Query: ordinals (in the rewritten text) of the injected SET LOCALs,
	// how many statements have completed, and the position shifts.
	ordinals []int
	done     int
	shifts   []shiftAt

	predicted tenantState // Sync/Query: the tenant state after it, if it succeeds
}

// failure is the error a refused message produces for the client.
type failure struct {
	v        *policy.Violation
	position int32 // 1-based character position, 0 if none
}

// shiftAt records text pgmoat inserted into a Query: n characters at
// character position pos of the rewritten text.
type shiftAt struct{ pos, n int }

// queue is a FIFO of expected replies. Entries are reused to avoid
// allocating per message; a pointer returned by push is valid until the
// entry is popped.
type queue struct {
	buf        []entry
	head, size int
}

func (q *queue) len() int { return q.size }

func (q *queue) push(e entry) *entry {
	if q.size == len(q.buf) {
		q.grow()
	}
	i := (q.head + q.size) % len(q.buf)
	// Keep the slices' backing arrays for reuse.
	ord, sh := q.buf[i].ordinals[:0], q.buf[i].shifts[:0]
	q.buf[i] = e
	q.buf[i].ordinals, q.buf[i].shifts = ord, sh
	q.size++
	return &q.buf[i]
}

func (q *queue) grow() {
	n := max(16, 2*len(q.buf))
	buf := make([]entry, n)
	for i := 0; i < q.size; i++ {
		buf[i] = q.buf[(q.head+i)%len(q.buf)]
	}
	q.buf, q.head = buf, 0
}

// front returns the oldest entry, or nil.
func (q *queue) front() *entry {
	if q.size == 0 {
		return nil
	}
	return &q.buf[q.head]
}

func (q *queue) pop() {
	q.head = (q.head + 1) % len(q.buf)
	q.size--
}

// at returns the i-th oldest entry.
func (q *queue) at(i int) *entry { return &q.buf[(q.head+i)%len(q.buf)] }

// removeAt deletes the i-th oldest entry, keeping the order of the others.
func (q *queue) removeAt(i int) {
	for j := i; j < q.size-1; j++ {
		*q.at(j), *q.at(j + 1) = *q.at(j + 1), *q.at(j)
	}
	q.size--
}
