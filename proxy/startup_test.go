package proxy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgmoat/pgmoat/config"
)

// TestIncompleteStartup: like PostgreSQL, pgmoat closes a connection that
// never sent a whole startup packet (it closed or let limits.auth_timeout
// pass) without writing anything, logs it at debug level only and counts it
// as a protocol error; a port probe (no byte, then close) ends cleanly. A
// malformed startup packet still gets 08P01.
func TestIncompleteStartup(t *testing.T) {
	p := startProxy(t, func(c *config.Config) { c.Limits.AuthTimeout = 200 * time.Millisecond })
	// A server of the test's own, to read its log.
	logs := &lockedBuffer{}
	o := p.srv.opts
	o.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := NewServer(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(served) }()
	t.Cleanup(func() { cancel(); <-served })

	half := []byte{0, 0, 0, 40, 0, 3, 0} // a StartupMessage's first 7 of 40 bytes
	tests := []struct {
		name   string
		send   []byte
		close  bool   // half-close after sending; else wait for the auth timeout
		reply  string // SQLSTATE of the expected ErrorResponse; "": no byte at all
		result string
	}{
		{"nothing until the timeout", nil, false, "", ResultProtocolError},
		{"part of a packet until the timeout", half, false, "", ResultProtocolError},
		{"part of a packet then close", half, true, "", ResultProtocolError},
		{"nothing then close (a port probe)", nil, true, "", ResultOK},
		{"malformed length", []byte{0, 0, 0, 2}, false, "08P01", ResultProtocolError},
		{"malformed packet", []byte{0, 0, 0, 9, 0, 3, 0, 0, 'x'}, false, "08P01", ResultProtocolError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := testutil.ToFloat64(p.metrics.clientConnsTotal.WithLabelValues(tt.result))
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// The guard only keeps a broken build from hanging the test run.
			conn.SetDeadline(time.Now().Add(time.Minute))
			if _, err := conn.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			if tt.close {
				conn.(*net.TCPConn).CloseWrite()
			}
			got, err := io.ReadAll(conn)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the connection stayed open")
			}
			if tt.reply == "" {
				if len(got) > 0 {
					t.Errorf("pgmoat wrote %q, want nothing", got)
				}
			} else if i := strings.Index(string(got), "\x00C"); len(got) == 0 || got[0] != 'E' || i < 0 || len(got) < i+7 || string(got[i+2:i+7]) != tt.reply {
				t.Errorf("reply %q, want an ErrorResponse with SQLSTATE %s", got, tt.reply)
			}
			// After an error pgmoat lingers until the client closes
			// (see linger), then counts the session.
			conn.Close()
			for bound := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				after := testutil.ToFloat64(p.metrics.clientConnsTotal.WithLabelValues(tt.result))
				if after == before+1 {
					break
				}
				if after > before+1 || time.Now().After(bound) {
					t.Fatalf("connections with result %s: %v, want %v", tt.result, after, before+1)
				}
			}
		})
	}
	logs.mu.Lock()
	defer logs.mu.Unlock()
	incomplete := 0
	for line := range strings.Lines(logs.buf.String()) {
		var rec struct{ Level, Msg, Err string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if strings.Contains(rec.Err, "incomplete startup packet") {
			incomplete++
			if rec.Level != "DEBUG" {
				t.Errorf("logged at %s: %s", rec.Level, line)
			}
		}
	}
	if incomplete != 3 {
		t.Errorf("%d log lines about an incomplete startup packet, want 3:\n%s", incomplete, logs.buf.String())
	}
}
