//go:build linux && (amd64 || arm64)

package proxy

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// eventLoop is one locked OS thread that waits in epoll for the sockets of
// many sessions and relays what they can read, as PgBouncer does. A Go hop
// through the netpoller costs 3.2 context switches and 68 µs of CPU per
// round trip here against PgBouncer's 2.0 and 44 µs (BENCHMARKS.md); most
// of the difference is the runtime's bookkeeping around each system call
// (entersyscall/exitsyscall, and the thread and sysmon wake-ups that
// follow), not the goroutines. So while it is busy the loop makes its
// system calls with syscall.RawSyscall, which skips that bookkeeping.
//
// A raw system call keeps its P while it blocks. So the loop waits raw only
// while events keep coming, for at most rawWait at a time; otherwise it
// parks in Go's netpoller until its epoll descriptor has events, holding
// neither a P nor a system call: an idle loop costs nothing. (A blocking
// epoll_pwait would leave its P in a system call for sysmon to take away
// and give back, over and over while other goroutines run: that cost
// pgmoat 2 ms of CPU per login in a connection storm.) A raw wait is
// interrupted by the signal with which the runtime preempts a goroutine (a
// garbage collection stopping the world), and the loop then yields.
//
// Everything a loopConn does runs on the loop thread. Other goroutines
// reach it only through post.
type eventLoop struct {
	ep int // the epoll descriptor
	// idle is a second epoll descriptor, in Go's netpoller, that watches
	// ep only while the loop is idle: readable when ep has events. ep
	// itself is not in the netpoller, which would wake a runtime thread
	// at every event of a busy loop.
	idle    int
	idleRaw syscall.RawConn
	wake    [2]int // a pipe: post writes to wake[1] to end a wait

	mu     sync.Mutex
	posted []posted

	sessions atomic.Int64 // registered loopConns, to balance new ones

	// Loop thread only.
	conns  []loopConn // by descriptor number; nil where none is registered
	events []syscall.EpollEvent
	busy   bool // the last wait returned events (and there are two Ps): wait raw
}

// loopConn is what a registered descriptor's events are delivered to: a
// session's relay. fail ends it after a panic in its code, which must not
// end the loop's other sessions.
type loopConn interface {
	ready(fd int, events uint32)
	fail(err error)
}

// posted is a function to run on the loop thread for c.
type posted struct {
	c loopConn
	f func()
}

// rawWait is how long, in milliseconds, a busy loop waits with its P held
// before it waits in a blocking system call: long enough that a steady
// stream of round trips never leaves the raw path, short enough that a
// loop that became idle soon gives its P back.
const rawWait = 2

const epollEvents = 256

var (
	loopsOnce sync.Once
	loops     []*eventLoop
	loopsErr  error
)

// eventLoops returns the process's event loops, started on first use: one
// per two Ps, since each holds a P while it is busy. With a single P there
// are none (a loop's raw wait would stall every goroutine), and sessions
// relay with goroutines.
func eventLoops() ([]*eventLoop, error) {
	loopsOnce.Do(func() {
		n := runtime.GOMAXPROCS(0) / 2
		for range n {
			l, err := newEventLoop()
			if err != nil {
				loopsErr = err
				return
			}
			go l.run()
			loops = append(loops, l)
		}
	})
	return loops, loopsErr
}

// pickLoop returns the loop with the fewest sessions, or nil if there is
// none.
func pickLoop() (*eventLoop, error) {
	all, err := eventLoops()
	var best *eventLoop
	for _, l := range all {
		if best == nil || l.sessions.Load() < best.sessions.Load() {
			best = l
		}
	}
	return best, err
}

func newEventLoop() (*eventLoop, error) {
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("event loop: epoll_create1: %w", err)
	}
	l := &eventLoop{ep: ep, events: make([]syscall.EpollEvent, epollEvents)}
	// Non-blocking, os.NewFile puts idle in the netpoller. Both live as
	// long as the process.
	if l.idle, err = syscall.EpollCreate1(syscall.EPOLL_CLOEXEC); err == nil {
		if err = syscall.SetNonblock(l.idle, true); err == nil {
			l.idleRaw, err = os.NewFile(uintptr(l.idle), "epoll").SyscallConn()
		}
	}
	if err != nil {
		syscall.Close(ep)
		return nil, fmt.Errorf("event loop: idle epoll: %w", err)
	}
	if err := syscall.Pipe2(l.wake[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		syscall.Close(ep)
		return nil, fmt.Errorf("event loop: pipe2: %w", err)
	}
	if err := l.ctl(syscall.EPOLL_CTL_ADD, l.wake[0], syscall.EPOLLIN); err != nil {
		syscall.Close(ep)
		syscall.Close(l.wake[0])
		syscall.Close(l.wake[1])
		return nil, err
	}
	return l, nil
}

// post runs f on the loop thread for c, after what is posted before it.
// Safe for concurrent use; it never waits for the loop.
func (l *eventLoop) post(c loopConn, f func()) {
	l.mu.Lock()
	first := len(l.posted) == 0
	l.posted = append(l.posted, posted{c, f})
	l.mu.Unlock()
	if first {
		// The pipe holds one byte per pending batch of posts; if it is
		// full (impossible: the loop empties it before running them) the
		// loop is awake anyway.
		syscall.Write(l.wake[1], []byte{0})
	}
}

// run is the loop. It never returns: the loops live as long as the process.
func (l *eventLoop) run() {
	runtime.LockOSThread()
	for {
		n := l.wait()
		woken := false
		for _, ev := range l.events[:n] {
			fd := int(ev.Fd)
			if fd == l.wake[0] {
				woken = true
				continue
			}
			// A descriptor unregistered earlier in this batch has no conn.
			if fd < len(l.conns) && l.conns[fd] != nil {
				c, events := l.conns[fd], ev.Events
				dispatch(c, func() { c.ready(fd, events) })
			}
		}
		// After the batch: a session that ended in it may have closed a
		// descriptor whose number a posted registration reuses, and the
		// batch's later events for that number are the old socket's.
		if woken {
			l.runPosted()
		}
	}
}

// wait waits for events and returns how many there are in l.events.
func (l *eventLoop) wait() int {
	for {
		var n uintptr
		var e syscall.Errno
		if l.busy {
			n, e = l.epollWait(rawWait)
		} else {
			n, e = l.idleWait()
		}
		switch {
		case e == syscall.EINTR:
			// Most likely the runtime asking this goroutine to stop (the
			// garbage collector): a raw system call gave it no chance.
			runtime.Gosched()
		case e != 0:
			// EBADF, EFAULT, EINVAL: a bug, not a condition to survive.
			panic(fmt.Sprintf("event loop: epoll_pwait: %v", e))
		case n == 0:
			l.busy = false
		default:
			if !l.busy {
				// Read when the loop wakes, not at every wait: Go may
				// lower GOMAXPROCS to a container's limit while running.
				l.busy = runtime.GOMAXPROCS(0) > 1
			}
			return int(n)
		}
	}
}

// idleWait parks the loop in Go's netpoller until ep has events, and
// returns them.
func (l *eventLoop) idleWait() (n uintptr, e syscall.Errno) {
	watch := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(l.ep)}
	if err := syscall.EpollCtl(l.idle, syscall.EPOLL_CTL_ADD, l.ep, &watch); err != nil {
		panic(fmt.Sprintf("event loop: watch for idleness: %v", err)) // a bug
	}
	err := l.idleRaw.Read(func(uintptr) bool {
		n, e = l.epollWait(0)
		return n > 0 || e != 0 && e != syscall.EINTR // else: park until readable
	})
	if err != nil {
		panic(fmt.Sprintf("event loop: wait in the netpoller: %v", err)) // a bug
	}
	if err := syscall.EpollCtl(l.idle, syscall.EPOLL_CTL_DEL, l.ep, &watch); err != nil {
		panic(fmt.Sprintf("event loop: end idleness: %v", err))
	}
	return n, e
}

// epollWait is epoll_pwait without the runtime's system-call bookkeeping;
// timeout is in milliseconds.
func (l *eventLoop) epollWait(timeout uintptr) (uintptr, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(l.ep), uintptr(unsafe.Pointer(&l.events[0])), epollEvents, timeout, 0, 0)
	return n, e
}

func (l *eventLoop) runPosted() {
	var b [64]byte
	for {
		if n, _, _ := syscall.RawSyscall(syscall.SYS_READ, uintptr(l.wake[0]), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b))); int(n) < len(b) {
			break // drained (or EAGAIN)
		}
	}
	l.mu.Lock()
	posted := l.posted
	l.posted = nil
	l.mu.Unlock()
	for _, p := range posted {
		dispatch(p.c, p.f)
	}
}

// dispatch runs f, code of c, and fails c if f panics.
func dispatch(c loopConn, f func()) {
	if err := catch(func() error { f(); return nil }); err != nil {
		c.fail(err)
	}
}

// add registers fd for events, delivered to c. Loop thread only.
func (l *eventLoop) add(fd int, events uint32, c loopConn) error {
	if err := l.ctl(syscall.EPOLL_CTL_ADD, fd, events); err != nil {
		return err
	}
	for fd >= len(l.conns) {
		l.conns = append(l.conns, nil)
	}
	l.conns[fd] = c
	return nil
}

// modify changes the events fd waits for. Loop thread only.
func (l *eventLoop) modify(fd int, events uint32) error {
	return l.ctl(syscall.EPOLL_CTL_MOD, fd, events)
}

// remove unregisters fd, which stays open, if c registered it. Loop thread
// only.
func (l *eventLoop) remove(fd int, c loopConn) {
	if fd < len(l.conns) && l.conns[fd] == c {
		l.ctl(syscall.EPOLL_CTL_DEL, fd, 0)
		l.conns[fd] = nil
	}
}

func (l *eventLoop) ctl(op, fd int, events uint32) error {
	ev := syscall.EpollEvent{Events: events, Fd: int32(fd)}
	if err := syscall.EpollCtl(l.ep, op, fd, &ev); err != nil {
		return fmt.Errorf("event loop: epoll_ctl: %w", err)
	}
	return nil
}

// rawRead and rawWrite are read(2) and write(2) on a non-blocking
// descriptor without the runtime's system-call bookkeeping (see
// eventLoop). They never block.
func rawRead(fd int, b []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), e
}

func rawWrite(fd int, b []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), e
}
