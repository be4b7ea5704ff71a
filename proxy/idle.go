package proxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// errIdleTimeout ends a session whose client stayed idle for
// limits.idle_timeout.
var errIdleTimeout = errors.New("idle session timeout")

// readStop lets other goroutines end the client relay: shutdown, the idle
// timeout and a reload's revocation move the client connection's read
// deadline to now, and clientToServer, whose read then fails with a timeout,
// asks cause why; on an event loop they post to the loop instead
// (redirect). The first reason wins and the deadline is never moved back,
// so no mechanism can undo another.
//
// It is also a gate: the client relay holds it (enter/leave) from reading a
// message until the message is in the rewrite state, and stopIf decides
// under it. So a stopper that finds the session idle cannot race a message
// already read, which would otherwise go upstream and run while its client
// is told the session ended. Safe for concurrent use.
type readStop struct {
	mu        sync.Mutex
	interrupt func() // makes the relay's pending and future client reads end
	reason    error
}

func newReadStop(conn net.Conn) *readStop {
	return &readStop{interrupt: func() { conn.SetReadDeadline(time.Now()) }}
}

// redirect replaces how reads are interrupted; if reads were stopped
// already, interrupt runs at once.
func (r *readStop) redirect(interrupt func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.interrupt = interrupt
	if r.reason != nil {
		interrupt()
	}
}

// stop makes the relay's pending and future client reads fail; reason is
// what cause reports, unless an earlier stop gave one.
func (r *readStop) stop(reason error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reason == nil {
		r.reason = reason
	}
	r.interrupt()
}

// stopIf is stop, if cond (evaluated under the gate) holds.
func (r *readStop) stopIf(reason error, cond func() bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reason == nil && cond() {
		r.reason = reason
		r.interrupt()
	}
}

// enter returns why reads were stopped, or nil and holds the gate until
// leave: the client relay calls it for each message it read.
func (r *readStop) enter() error {
	r.mu.Lock()
	if r.reason != nil {
		r.mu.Unlock()
		return r.reason
	}
	return nil
}

// leave releases the gate enter took.
func (r *readStop) leave() { r.mu.Unlock() }

// gated runs f holding the gate, and releases it even if f panics: an
// event loop survives a session's panic (eventloop.go), and the gate must
// not stay locked for the stoppers.
func (r *readStop) gated(f func() error) error {
	if err := r.enter(); err != nil {
		return err
	}
	defer r.leave()
	return f()
}

// cause is the reason of the first stop, or nil if reads were not stopped.
func (r *readStop) cause() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reason
}

// idleTimer calls expire once the session has been idle (idle reports
// true) with no activity for timeout. Activity is what the relay reports
// with touch: every client message, and every ReadyForQuery from the server
// (where idleness starts). touch is one atomic store; the timer checks only
// when the timeout could have elapsed and otherwise re-arms itself for the
// remainder. A session that is busy (a long query, an open transaction) when
// the timer fires is checked again a timeout later. A nil *idleTimer (no
// timeout configured) does nothing. Safe for concurrent use.
type idleTimer struct {
	timeout time.Duration
	idle    func() bool
	expire  func()
	start   time.Time    // origin of last, for a monotonic clock
	last    atomic.Int64 // time.Since(start) at the last activity

	mu      sync.Mutex // guards t's re-arming against stop
	t       *time.Timer
	stopped bool
}

// newIdleTimer starts the timer, or returns nil if timeout is not positive.
// The session counts as active at the start.
func newIdleTimer(timeout time.Duration, idle func() bool, expire func()) *idleTimer {
	if timeout <= 0 {
		return nil
	}
	it := &idleTimer{timeout: timeout, idle: idle, expire: expire, start: time.Now()}
	it.mu.Lock()
	defer it.mu.Unlock()
	it.t = time.AfterFunc(timeout, it.check)
	return it
}

// touch records activity now.
func (it *idleTimer) touch() {
	if it != nil {
		it.last.Store(int64(time.Since(it.start)))
	}
}

// stop ends the timer; expire is not called after stop returns, unless a
// call is already running.
func (it *idleTimer) stop() {
	if it == nil {
		return
	}
	it.mu.Lock()
	defer it.mu.Unlock()
	it.stopped = true
	it.t.Stop()
}

func (it *idleTimer) check() {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.stopped {
		return
	}
	quiet := time.Since(it.start) - time.Duration(it.last.Load())
	if quiet >= it.timeout && it.idle() {
		it.stopped = true
		it.expire()
		return
	}
	wait := it.timeout - quiet
	if wait <= 0 { // busy
		wait = it.timeout
	}
	it.t.Reset(wait)
}

// adminState tracks whether an admin session, which has no rewrite.Session,
// is idle, from the message types alone: every Query, Sync and FunctionCall
// is answered by exactly one ReadyForQuery. Where that does not hold (a Sync
// the server ignores during COPY) the session merely never looks idle again,
// so it is never closed for idleness by mistake. client runs on the
// client-reading goroutine, server on the server-reading one; idle on any.
type adminState struct {
	pending  atomic.Int64  // ReadyForQuery messages the server owes
	unsynced atomic.Bool   // extended-protocol messages sent since the last Sync
	status   atomic.Uint32 // transaction status of the last ReadyForQuery; 0 before the first
}

// client records a client message of type typ, before it goes upstream.
func (s *adminState) client(typ byte) {
	switch typ {
	case 'Q', 'F':
		s.pending.Add(1)
	case 'S':
		s.unsynced.Store(false)
		s.pending.Add(1)
	case 'P', 'B', 'E', 'D', 'C', 'H':
		s.unsynced.Store(true)
	}
}

// server records a server message (the whole message, header included).
func (s *adminState) server(msg []byte) {
	if msg[0] != 'Z' || len(msg) < 6 {
		return
	}
	// The status first: idle must not pair the new count with the old
	// status.
	s.status.Store(uint32(msg[5]))
	s.pending.Add(-1)
}

// idle reports whether no reply is owed and no transaction is open.
func (s *adminState) idle() bool {
	st := s.status.Load()
	return s.pending.Load() == 0 && !s.unsynced.Load() && (st == 'I' || st == 0)
}

// idle reports whether the session is at a transaction boundary: no
// transaction open and no reply owed to the client. An admin session (no
// rewrite state) that sent a Sync the server ignored during COPY never looks
// idle again; shutdown and revocation then end it at their deadline.
func (c *session) idle() bool {
	if c.unflushed.Load() || c.parsing.Load() {
		return false
	}
	if c.rw != nil {
		return c.rw.Idle()
	}
	return c.admin.idle()
}

// startIdleTimer arms limits.idle_timeout for the relay, if configured; its
// expiry stops the client reads with errIdleTimeout.
func (c *session) startIdleTimer() {
	c.idleTimer = newIdleTimer(c.srv.live().cfg.Limits.IdleTimeout, c.idle, func() {
		c.reads.stopIf(errIdleTimeout, c.idle)
	})
}
