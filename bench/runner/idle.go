package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// idleResult is the middle layer's resident memory with n idle clients.
type idleResult struct {
	n             int
	before, after int64 // RSS in bytes
}

// perConn is the extra resident memory per idle client connection.
func (r idleResult) perConn() float64 { return float64(r.after-r.before) / float64(r.n) }

// idleMemory opens n client connections to t (SCRAM login, then nothing),
// reads the middle layer's RSS before and with them open, and closes them.
func idleMemory(ctx context.Context, t *target, n int) (idleResult, error) {
	res := idleResult{n: n}
	pid := t.pid()
	var err error
	if res.before, err = rss(pid); err != nil {
		return res, err
	}
	conns := make([]*pgconn.PgConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.Background())
			}
		}
	}()

	// A few logins at a time, as a pool filling up would do; SCRAM makes
	// each one cost a few milliseconds of CPU.
	const parallel = 8
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		next     = make(chan int)
	)
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				c, err := pgconn.Connect(cctx, t.connString())
				cancel()
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("idle connection %d to %s: %w", i, t.name, err)
				}
				conns[i] = c
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return res, firstErr
	}
	// Let the sessions settle (a session may allocate after its
	// ReadyForQuery has been sent) before reading the RSS.
	time.Sleep(500 * time.Millisecond)
	if res.after, err = rss(pid); err != nil {
		return res, err
	}
	return res, nil
}
