package proxy

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
)

// cancelKeys maps the BackendKeyData pgmoat gave each client to the server
// connection it may cancel. A client can only cancel its own query: keys are
// random, and an unknown key is dropped silently, as PostgreSQL does.
type cancelKeys struct {
	mu sync.Mutex
	m  map[uint64]cancelTarget
}

func newCancelKeys() *cancelKeys { return &cancelKeys{m: map[uint64]cancelTarget{}} }

// add registers target and returns the client's process id and secret key.
func (k *cancelKeys) add(t cancelTarget) (pid, secret uint32) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for {
		var b [8]byte
		rand.Read(b[:])
		id := binary.BigEndian.Uint64(b[:])
		if _, dup := k.m[id]; !dup && id != 0 {
			k.m[id] = t
			return uint32(id >> 32), uint32(id)
		}
	}
}

func (k *cancelKeys) remove(pid, secret uint32) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.m, uint64(pid)<<32|uint64(secret))
}

func (k *cancelKeys) lookup(pid uint32, secret []byte) (cancelTarget, bool) {
	if len(secret) != 4 {
		return cancelTarget{}, false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	t, ok := k.m[uint64(pid)<<32|uint64(binary.BigEndian.Uint32(secret))]
	return t, ok
}
