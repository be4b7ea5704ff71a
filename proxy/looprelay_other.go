//go:build !(linux && (amd64 || arm64))

package proxy

// Event loops are Linux-only (epoll): elsewhere every session relays with
// goroutines.

type loopRelay struct{}

func (c *session) startLoopRelay() (*loopRelay, error) { return nil, nil }

func (r *loopRelay) wait() error { panic("unreachable: no event loops on this platform") }
