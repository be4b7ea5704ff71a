//go:build linux && (amd64 || arm64)

package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/pgmoat/pgmoat/config"
)

// loopRelay is a session's relay on an event loop (eventloop.go). It does
// what clientToServer and serverToClient do, message for message (both call
// fromClient and fromServer), and differs only in how it waits:
//
//   - The sockets leave Go's netpoller: the relay owns duplicates of their
//     descriptors, and gives them back as net.Conns when it ends (for the
//     final error and the server's hang-up).
//   - Reading one side pauses while the other side's socket cannot take
//     what is owed to it (a client that does not read its rows stops the
//     server's), as the goroutines block in Write.
//   - A statement the policy cannot answer without parsing it (a text of a
//     new shape: tens of microseconds to milliseconds) is parsed on a
//     goroutine while the session's client reads pause; the loop serves
//     the other sessions meanwhile.
//   - Stopping it (shutdown, idle timeout, revocation: readStop) posts to
//     the loop, which ends the relay where the goroutines' client read
//     would fail.
//
// Every method runs on the loop thread, except wait (and startLoopRelay,
// which makes it).
type loopRelay struct {
	c        *session
	l        *eventLoop
	cfd, sfd int

	// toClient holds replies for the client, sent from toClient[clientOff:];
	// c.sw.buf holds messages for the server, sent from c.sw.buf[serverOff:].
	// clientFull and serverFull: that socket took less than it was given,
	// and the rest waits for EPOLLOUT.
	toClient               []byte
	clientOff, serverOff   int
	clientFull, serverFull bool

	held     []byte // the client message waiting for its policy decision, or nil
	received int    // client bytes not counted in the metrics yet
	events   [2]uint32
	ended    bool
	done     chan error
}

// startLoopRelay moves the session's relay to an event loop, or returns nil
// if it stays with goroutines: TLS (the loop reads raw sockets); admin
// sessions, which write an audit line for every statement (a tenant's
// blocked statement does too, on the loop, but blocks are rare); relay:
// goroutines in the configuration; a single P; an upstream connection
// still read by pgconn; a policy without a decision cache (every text would
// be parsed off the loop).
func (c *session) startLoopRelay() (*loopRelay, error) {
	if c.tls || c.rw == nil || c.srv.opts.Config.Relay == config.RelayGoroutines || !c.server.detachable() || !c.srv.opts.Engine().Caching() {
		return nil, nil
	}
	l, err := pickLoop()
	if l == nil {
		return nil, err
	}
	cfd, err := dupFD(c.conn)
	if err != nil {
		return nil, err
	}
	sfd, err := dupFD(c.server.Conn)
	if err != nil {
		syscall.Close(cfd)
		return nil, err
	}
	// Closing the originals takes them out of the runtime's netpoller,
	// which would otherwise wake a thread for every event of theirs.
	c.conn.Close()
	c.server.Conn.Close()
	c.cr.r, c.sr.r = rawFD(cfd), rawFD(sfd)
	c.onLoop = true
	r := &loopRelay{c: c, l: l, cfd: cfd, sfd: sfd, done: make(chan error, 1)}
	l.sessions.Add(1)
	l.post(r, r.register)
	// From now on a stop ends the relay on the loop; one that came before
	// does so at once (the post runs after register).
	c.reads.redirect(func() { l.post(r, r.stopped) })
	return r, nil
}

// wait returns why the relay ended, once it has, with the sockets given
// back to the session as net.Conns (for the final error and the server's
// hang-up).
func (r *loopRelay) wait() error {
	err := <-r.done
	c := r.c
	r.l.sessions.Add(-1)
	c.onLoop = false
	if conn, ferr := fileConn(r.sfd, "server"); ferr != nil {
		c.log.Warn("event loop: give the server socket back", "err", ferr)
	} else {
		c.server.Conn, c.server.r = conn, nil
		if rest := c.sw.buf[r.serverOff:]; len(rest) > 0 && errors.Is(err, errClientClosed) {
			// The client's last messages (Terminate) that the server's
			// socket could not take yet still go, as the goroutines'
			// Flush sends them.
			conn.SetWriteDeadline(time.Now().Add(time.Second))
			conn.Write(rest)
		}
	}
	conn, ferr := fileConn(r.cfd, "client")
	if ferr != nil {
		c.log.Warn("event loop: give the client socket back", "err", ferr)
		return err // the final error cannot be sent: c.conn is closed
	}
	c.conn, c.cw.w = conn, conn
	return err
}

// fileConn returns a net.Conn, in Go's netpoller, of a duplicate of fd, and
// closes fd.
func fileConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return net.FileConn(f)
}

// dupFD returns a duplicate of conn's descriptor (close-on-exec,
// non-blocking like the original).
func dupFD(conn net.Conn) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("event loop: %T has no descriptor", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("event loop: %w", err)
	}
	fd := -1
	cerr := raw.Control(func(orig uintptr) {
		var e syscall.Errno
		var n uintptr
		n, _, e = syscall.Syscall(syscall.SYS_FCNTL, orig, syscall.F_DUPFD_CLOEXEC, 0)
		if e != 0 {
			err = e
			return
		}
		fd = int(n)
	})
	if cerr != nil {
		err = cerr
	}
	if err != nil {
		return -1, fmt.Errorf("event loop: duplicate socket: %w", err)
	}
	return fd, nil
}

// rawFD reads a non-blocking descriptor for a msgReader on the loop:
// errWouldBlock when nothing is there.
type rawFD int

var errWouldBlock = errors.New("would block")

func (fd rawFD) Read(b []byte) (int, error) {
	n, e := rawRead(int(fd), b)
	switch {
	case e == syscall.EAGAIN || e == syscall.EINTR:
		return 0, errWouldBlock
	case e != 0:
		return 0, e
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (r *loopRelay) register() {
	in := uint32(syscall.EPOLLIN | syscall.EPOLLRDHUP)
	if err := r.l.add(r.cfd, in, r); err != nil {
		r.end(err)
		return
	}
	if err := r.l.add(r.sfd, in, r); err != nil {
		r.end(err)
		return
	}
	r.events = [2]uint32{in, in}
	// The client may have sent messages behind its startup packet.
	r.drainClient()
	r.update()
}

// stopped ends the relay if readStop was stopped (readStop.redirect).
func (r *loopRelay) stopped() {
	if cause := r.c.reads.cause(); cause != nil {
		r.end(cause)
	}
}

func (r *loopRelay) fail(err error) { r.end(err) }

// end unregisters the sockets and reports err to wait, once.
func (r *loopRelay) end(err error) {
	if r.ended {
		return
	}
	r.ended = true
	r.c.parsing.Store(false) // a held message never goes upstream
	r.c.srv.opts.Metrics.ClientBytesReceived(r.received)
	r.l.remove(r.cfd, r)
	r.l.remove(r.sfd, r)
	r.done <- err
}

func (r *loopRelay) ready(fd int, events uint32) {
	hangup := events&(syscall.EPOLLHUP|syscall.EPOLLERR) != 0
	if fd == r.cfd {
		if events&syscall.EPOLLOUT != 0 {
			r.flushClient()
			r.drainServer() // replies that waited for the client's socket
		}
		if events&(syscall.EPOLLIN|syscall.EPOLLRDHUP) != 0 || hangup {
			r.readClient(hangup)
		}
	} else {
		if events&syscall.EPOLLOUT != 0 {
			r.flushServer()
			r.drainClient() // messages that waited for the server's socket
		}
		if events&(syscall.EPOLLIN|syscall.EPOLLRDHUP) != 0 || hangup {
			r.readServer(hangup)
		}
	}
	r.update()
}

// The two sides pause each other: the client's messages wait while the
// server's socket is full or a policy decision is being made, the server's
// replies while the client's socket is full.
func (r *loopRelay) clientPaused() bool { return r.held != nil || r.serverFull }
func (r *loopRelay) serverPaused() bool { return r.clientFull }

// update registers the events each socket now waits for.
func (r *loopRelay) update() {
	if r.ended {
		return
	}
	var want [2]uint32
	if !r.clientPaused() {
		want[0] |= syscall.EPOLLIN | syscall.EPOLLRDHUP
	}
	if !r.serverPaused() {
		want[1] |= syscall.EPOLLIN | syscall.EPOLLRDHUP
	}
	if r.clientFull {
		want[0] |= syscall.EPOLLOUT
	}
	if r.serverFull {
		want[1] |= syscall.EPOLLOUT
	}
	for i, fd := range [2]int{r.cfd, r.sfd} {
		if want[i] != r.events[i] {
			if err := r.l.modify(fd, want[i]); err != nil {
				r.end(err)
				return
			}
			r.events[i] = want[i]
		}
	}
}

// readClient reads what the client sent and relays it. A socket that hung
// up while the session cannot read it ends the relay: level-triggered
// epoll would report it again and again.
func (r *loopRelay) readClient(hangup bool) {
	if r.ended {
		return
	}
	if r.clientPaused() {
		if hangup {
			r.end(errClientClosed)
		}
		return
	}
	if err := r.c.cr.readOnce(); err != nil && err != errWouldBlock {
		// What arrived whole before the end still goes upstream, as the
		// goroutines relay it before their read fails.
		r.drainClient()
		if errors.Is(err, io.EOF) {
			err = errClientClosed
		} else {
			err = fmt.Errorf("read client: %w", err)
		}
		r.end(err)
		return
	}
	r.drainClient()
}

// drainClient relays the whole client messages buffered, as far as the
// server's socket takes them.
func (r *loopRelay) drainClient() {
	c := r.c
	for !r.ended && !r.clientPaused() {
		ok, err := c.cr.ready()
		if err != nil {
			r.end(protocolViolation("pgmoat: %v", err))
			return
		}
		if !ok {
			break
		}
		typ, msg, _ := c.cr.Next()
		if !r.fromClient(typ, msg) {
			return
		}
		if c.sw.Len() >= flushSize {
			r.flushServer()
		}
	}
	if !r.ended && r.held == nil {
		r.flushServer()
	}
}

// fromClient relays one client message; false if it ended the relay or
// waits for a policy decision.
func (r *loopRelay) fromClient(typ byte, msg []byte) bool {
	err := r.c.fromClient(typ, msg)
	var later *errParseLater
	switch {
	case err == nil:
		r.received += len(msg)
		return true
	case errors.As(err, &later):
		r.flushServer() // what came before it need not wait
		r.hold(msg, later.sql)
		return false
	case errors.Is(err, errClientClosed): // Terminate
		r.received += len(msg)
		r.flushServer()
	}
	r.end(err)
	return false
}

// hold parks msg while a goroutine makes the policy decision for sql; the
// loop then relays msg again, and decide finds the decision in c.decided.
func (r *loopRelay) hold(msg []byte, sql string) {
	r.held = msg // reads are paused: msg's bytes in c.cr stay put
	c := r.c
	e, pol := c.srv.opts.Engine(), &c.pol // pol does not change while held
	go func() {
		start := time.Now()
		d, v := e.Check(sql, pol)
		res := &decision{sql: sql, d: d, v: v, took: time.Since(start)}
		r.l.post(r, func() {
			if r.ended {
				return
			}
			msg := r.held
			r.held = nil
			c.decided = res
			relayed := r.fromClient(msg[0], msg)
			// Not used if the message was skipped (an earlier error
			// in its batch): it must not answer a later one.
			c.decided = nil
			c.parsing.Store(false)
			if relayed {
				r.drainClient()
			}
			r.update()
		})
	}()
}

// flushClient writes what the client is owed, as far as its socket takes
// it (EPOLLOUT resumes it), and marks the session flushed once all is
// written.
func (r *loopRelay) flushClient() {
	c := r.c
	if r.ended {
		return
	}
	if r.clientOff < len(r.toClient) {
		n, err := writeSome(r.cfd, r.toClient[r.clientOff:])
		r.clientOff += n
		c.srv.opts.Metrics.ClientBytesSent(n)
		if err != nil {
			r.end(errClientClosed)
			return
		}
		if r.clientFull = r.clientOff < len(r.toClient); r.clientFull {
			return
		}
		r.toClient, r.clientOff = r.toClient[:0], 0
		if cap(r.toClient) > 4*flushSize {
			r.toClient = nil
		}
		c.sr.shrink()
	}
	c.unflushed.Store(false)
	c.closeIfRevoked()
}

// flushServer writes the client's messages, as far as the server's socket
// takes them.
func (r *loopRelay) flushServer() {
	c := r.c
	if r.ended || r.serverOff == len(c.sw.buf) {
		return
	}
	c.srv.opts.Metrics.ClientBytesReceived(r.received)
	r.received = 0
	n, err := writeSome(r.sfd, c.sw.buf[r.serverOff:])
	r.serverOff += n
	if err != nil {
		r.end(fmt.Errorf("%w: %v", errServerClosed, err))
		return
	}
	if r.serverFull = r.serverOff < len(c.sw.buf); r.serverFull {
		return
	}
	c.sw.buf, r.serverOff = c.sw.buf[:0], 0
	if cap(c.sw.buf) > 4*flushSize {
		c.sw.buf = make([]byte, 0, 8192)
	}
	if r.held == nil { // c.cr holds the held message
		c.cr.shrink()
	}
}

func (r *loopRelay) readServer(hangup bool) {
	if r.ended {
		return
	}
	if r.serverPaused() {
		if hangup {
			r.end(errServerClosed)
		}
		return
	}
	if err := r.c.sr.readOnce(); err != nil && err != errWouldBlock {
		// What the server sent before it went is relayed first.
		r.drainServer()
		r.end(fmt.Errorf("%w: %v", errServerClosed, err))
		return
	}
	r.drainServer()
}

// drainServer relays the whole server messages buffered, as far as the
// client's socket takes them.
func (r *loopRelay) drainServer() {
	c := r.c
	for !r.ended && !r.serverPaused() {
		ok, err := c.sr.ready()
		if err != nil {
			r.end(fmt.Errorf("%w: %v", errServerClosed, err))
			return
		}
		if !ok {
			break
		}
		typ, msg, _ := c.sr.Next()
		if r.toClient, err = c.fromServer(typ, msg, r.toClient); err != nil {
			r.end(err)
			return
		}
		if len(r.toClient) >= flushSize {
			r.flushClient()
		}
	}
	r.flushClient()
}

// writeSome writes as much of b as the non-blocking fd takes.
func writeSome(fd int, b []byte) (int, error) {
	written := 0
	for written < len(b) {
		n, e := rawWrite(fd, b[written:])
		switch e {
		case 0:
			written += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return written, nil
		default:
			return written, e
		}
	}
	return written, nil
}
