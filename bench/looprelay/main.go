// Command looprelay is an experiment, not a target of `make bench`: the bare
// relay of bench/relay rebuilt as one event loop on raw descriptors, to
// measure what a hop costs outside Go's netpoller.
//
//	looprelay -listen 127.0.0.1:6434 -upstream 127.0.0.1:5432
//
// One OS thread waits in epoll_wait for every connection and copies what a
// readable descriptor holds to its peer, as PgBouncer's event loop does. It
// makes its system calls with syscall.RawSyscall, which skips the runtime's
// bookkeeping around a system call (entersyscall/exitsyscall, and the
// sysmon and futex wake-ups that come with it): that bookkeeping, not the
// goroutines, is what a Go hop costs over PgBouncer's (BENCHMARKS.md).
// A raw system call keeps its P while it blocks, so the loop needs
// GOMAXPROCS ≥ 2 and waits at most loopWait at a time, so that the garbage
// collector can stop it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"runtime"
	"syscall"
	"unsafe"
)

const (
	bufSize  = 32 << 10 // as bench/relay
	loopWait = 50       // ms
)

func main() {
	listen := flag.String("listen", "127.0.0.1:6434", "address to accept clients on")
	upstream := flag.String("upstream", "127.0.0.1:5432", "address of the PostgreSQL server")
	flag.Parse()
	up, err := sockaddr(*upstream)
	if err != nil {
		log.Fatal(err)
	}
	lfd, err := listenFD(*listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(loop(lfd, up))
}

func sockaddr(addr string) (*syscall.SockaddrInet4, error) {
	a, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return nil, err
	}
	sa := &syscall.SockaddrInet4{Port: a.Port}
	copy(sa.Addr[:], a.IP.To4())
	return sa, nil
}

// listenFD returns a listening, non-blocking IPv4 TCP socket.
func listenFD(addr string) (int, error) {
	sa, err := sockaddr(addr)
	if err != nil {
		return -1, err
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		return -1, err
	}
	if err := syscall.Bind(fd, sa); err != nil {
		return -1, fmt.Errorf("bind %s: %w", addr, err)
	}
	return fd, syscall.Listen(fd, 1024)
}

// loop relays every connection accepted on lfd to a new connection to up,
// until an unexpected error.
func loop(lfd int, up syscall.Sockaddr) error {
	runtime.LockOSThread()
	if runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	watch := func(fd int) error {
		return syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fd)})
	}
	if err := watch(lfd); err != nil {
		return err
	}
	peer := map[int]int{}
	closePair := func(fd int) {
		p := peer[fd]
		delete(peer, fd)
		delete(peer, p)
		syscall.Close(fd) // also removes it from the epoll set
		syscall.Close(p)
	}
	buf := make([]byte, bufSize)
	events := make([]syscall.EpollEvent, 128)
	for {
		r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_WAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), loopWait, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("epoll_wait: %w", e)
		}
		for _, ev := range events[:r] {
			fd := int(ev.Fd)
			if fd == lfd {
				if err := accept(lfd, up, peer, watch); err != nil {
					log.Print(err)
				}
				continue
			}
			p, ok := peer[fd]
			if !ok {
				continue // closed with its peer earlier in this batch
			}
			n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
			if e == syscall.EAGAIN {
				continue
			}
			if e != 0 || n == 0 || writeAll(p, buf[:n]) != nil {
				closePair(fd)
			}
		}
	}
}

// accept takes a client from lfd and connects it to up (a blocking connect:
// on loopback it takes microseconds).
func accept(lfd int, up syscall.Sockaddr, peer map[int]int, watch func(int) error) error {
	cfd, _, err := syscall.Accept4(lfd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
	if err != nil {
		if errors.Is(err, syscall.EAGAIN) {
			return nil
		}
		return fmt.Errorf("accept: %w", err)
	}
	sfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err == nil {
		if err = syscall.Connect(sfd, up); err == nil {
			err = syscall.SetNonblock(sfd, true)
		}
	}
	if err != nil {
		syscall.Close(cfd)
		syscall.Close(sfd)
		return fmt.Errorf("connect upstream: %w", err)
	}
	for _, fd := range []int{cfd, sfd} {
		syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	}
	peer[cfd], peer[sfd] = sfd, cfd
	if err := watch(cfd); err != nil {
		return err
	}
	return watch(sfd)
}

// writeAll writes b to the non-blocking fd, waiting in poll(2) while its
// send buffer is full (which stalls the whole loop: an experiment's
// simplification).
func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case 0:
			b = b[n:]
		case syscall.EAGAIN:
			pfd := struct {
				fd             int32
				events, revent int16
			}{int32(fd), 0x4 /* POLLOUT */, 0}
			syscall.Syscall(syscall.SYS_POLL, uintptr(unsafe.Pointer(&pfd)), 1, 1000)
		case syscall.EINTR:
		default:
			return e
		}
	}
	return nil
}
