//go:build linux && (amd64 || arm64)

package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmoat/pgmoat/config"
)

// rawSession logs in to p as user and returns the raw protocol stream.
func (p *testProxy) rawSession(t *testing.T, user, password string) *pgproto3.Frontend {
	t.Helper()
	cfg, err := pgconn.ParseConfig(p.dsn(user, password))
	if err != nil {
		t.Fatal(err)
	}
	return rawConn(t, cfg)
}

// loopSessions is the number of sessions relayed on event loops.
func loopSessions(t *testing.T) int64 {
	all, err := eventLoops()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, l := range all {
		n += l.sessions.Load()
	}
	return n
}

// TestRelayMode: a plaintext tenant session relays on an event loop, unless
// the configuration says goroutines; an admin session always uses
// goroutines.
func TestRelayMode(t *testing.T) {
	if all, _ := eventLoops(); len(all) == 0 {
		t.Skip("no event loops with GOMAXPROCS < 2")
	}
	for _, tt := range []struct {
		relay, user, password string
		onLoop                bool
	}{
		{config.RelayLoop, "acme_app", "acme_secret", true},
		{config.RelayGoroutines, "acme_app", "acme_secret", false},
		{config.RelayLoop, "dba", "dba_secret", false},
	} {
		t.Run(tt.relay+"/"+tt.user, func(t *testing.T) {
			p := startRelayProxy(t, tt.relay)
			before := loopSessions(t)
			conn := p.connect(t, tt.user, tt.password, pgx.QueryExecModeSimpleProtocol)
			var one int
			if err := conn.QueryRow(context.Background(), "select 1").Scan(&one); err != nil {
				t.Fatal(err)
			}
			if got := loopSessions(t) - before; got != map[bool]int64{true: 1, false: 0}[tt.onLoop] {
				t.Errorf("sessions on event loops: %d more, want on loop = %v", got, tt.onLoop)
			}
			conn.Close(context.Background())
			waitFor(t, func() bool { return loopSessions(t) == before })
		})
	}
}

// TestRelayBackpressure sends and receives far more than the sockets
// buffer, while the client reads nothing at first: each side of the relay
// must wait for the other's socket without losing or reordering a byte, and
// without holding up other sessions. Each 1 MB query text is also too long
// for the decision cache, so on an event loop its policy decision is made
// off the loop every time.
func TestRelayBackpressure(t *testing.T) {
	for _, relay := range relays {
		t.Run(relay, func(t *testing.T) {
			p := startRelayProxy(t, relay)
			fe := p.rawSession(t, "acme_app", "acme_secret")
			const n, size = 40, 1 << 20
			sent := make(chan error, 1)
			go func() {
				// The server's first reply is 40 MB of rows; the client
				// reads none of it until it has sent everything.
				fe.Send(&pgproto3.Query{String: fmt.Sprintf("select repeat('y', %d) from generate_series(1, %d)", size, n)})
				for i := range n {
					fe.Send(&pgproto3.Query{String: fmt.Sprintf("select '%d' || '%s' as v", i, strings.Repeat("x", size))})
				}
				sent <- fe.Flush()
			}()

			// Meanwhile another session gets its answers.
			other := p.connect(t, "globex_app", "globex_secret", pgx.QueryExecModeSimpleProtocol)
			for range 3 {
				wantOnly(t, tenantsOf(t, other, "select current_setting('app.current_tenant_id')"), "globex")
			}
			select {
			case err := <-sent:
				t.Fatalf("the client sent 40 MB before reading anything (%v): nothing filled up", err)
			case <-time.After(200 * time.Millisecond):
			}

			bigRow := bytes.Repeat([]byte("y"), size)
			for i := -1; i < n; i++ {
				var got []byte
				for done := false; !done; {
					msg, err := fe.Receive()
					if err != nil {
						t.Fatalf("reply %d: %v", i, err)
					}
					switch m := msg.(type) {
					case *pgproto3.DataRow:
						if i < 0 {
							if !bytes.Equal(m.Values[0], bigRow) {
								t.Fatalf("row of the first reply: %d bytes, want %d y", len(m.Values[0]), size)
							}
							continue
						}
						got = bytes.Clone(m.Values[0])
					case *pgproto3.ErrorResponse:
						t.Fatalf("reply %d: %s %s", i, m.Code, m.Message)
					case *pgproto3.ReadyForQuery:
						done = true
					}
				}
				if want := fmt.Sprintf("%d%s", i, strings.Repeat("x", size)); i >= 0 && string(got) != want {
					t.Fatalf("reply %d: %d bytes starting %.10q, want %d starting %.10q", i, len(got), got, len(want), want)
				}
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRelayParsedElsewhere pipelines statements of new shapes, whose
// decisions the event loop has made on a goroutine, between statements it
// answers at once: the replies come in order, each statement with its
// tenant, and a refused one is refused.
func TestRelayParsedElsewhere(t *testing.T) {
	for _, relay := range relays {
		t.Run(relay, func(t *testing.T) {
			p := startRelayProxy(t, relay)
			fe := p.rawSession(t, "acme_app", "acme_secret")
			var msgs []pgproto3.FrontendMessage
			var want []string
			for i := range 20 {
				// A new shape (its alias), then a known one, in both protocols.
				msgs = append(msgs, &pgproto3.Query{String: fmt.Sprintf("select current_setting('app.current_tenant_id') || '%d' as c%d", i, i)})
				want = append(want, fmt.Sprintf("acme%d", i))
				msgs = append(msgs, &pgproto3.Query{String: fmt.Sprintf("select current_setting('app.current_tenant_id') || '%d' as c", i)})
				want = append(want, fmt.Sprintf("acme%d", i))
				msgs = append(msgs,
					&pgproto3.Parse{Query: fmt.Sprintf("select current_setting('app.current_tenant_id') || $1 as e%d", i)},
					&pgproto3.Bind{Parameters: [][]byte{fmt.Appendf(nil, "%d", i)}},
					&pgproto3.Execute{},
					&pgproto3.Sync{})
				want = append(want, fmt.Sprintf("acme%d", i))
			}
			msgs = append(msgs, &pgproto3.Query{String: "select tenant_id as refused_shape from orders where tenant_id = 'globex' union all select 'x' from pg_authid"})
			want = append(want, "42501")
			msgs = append(msgs, &pgproto3.Query{String: "select current_setting('app.current_tenant_id') as last"})
			want = append(want, "acme")
			for _, m := range msgs {
				fe.Send(m)
			}
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			var got []string
			for len(got) < len(want) {
				msg, err := fe.Receive()
				if err != nil {
					t.Fatalf("after %q: %v", got, err)
				}
				switch m := msg.(type) {
				case *pgproto3.DataRow:
					got = append(got, string(m.Values[0]))
				case *pgproto3.ErrorResponse:
					got = append(got, m.Code)
				}
			}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("replies:\n got %q\nwant %q", got, want)
			}
		})
	}
}

// replies reads until the given number of ReadyForQuery messages and
// describes what came: error SQLSTATEs, command tags, and "Z".
func replies(t *testing.T, fe *pgproto3.Frontend, readies int) []string {
	t.Helper()
	var got []string
	for readies > 0 {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			got = append(got, m.Code)
		case *pgproto3.CommandComplete:
			got = append(got, string(m.CommandTag))
		case *pgproto3.ReadyForQuery:
			got = append(got, "Z")
			readies--
		}
	}
	return got
}

// TestRelayDecisionNotReused: a statement whose decision was made off the
// loop, and which the server then skipped (an earlier statement of its
// batch failed meanwhile), leaves nothing behind: the same text later is
// decided afresh, here after the temporary table it reads was created.
func TestRelayDecisionNotReused(t *testing.T) {
	for _, relay := range relays {
		t.Run(relay, func(t *testing.T) {
			p := startRelayProxy(t, relay)
			fe := p.rawSession(t, "acme_app", "acme_secret")
			// Known texts, answered on the loop: the failing statement and
			// the DDL (decided in another session).
			other := p.rawSession(t, "acme_app", "acme_secret")
			other.Send(&pgproto3.Query{String: "create temp table tt_reuse (x int)"})
			other.Send(&pgproto3.Query{String: "select 1/0"})
			if err := other.Flush(); err != nil {
				t.Fatal(err)
			}
			replies(t, other, 2)

			// A new shape, slow to parse: the division fails on the server
			// while it is decided.
			in := make([]string, 40000)
			for i := range in {
				in[i] = fmt.Sprint(i)
			}
			slow := "select x from tt_reuse where x in (" + strings.Join(in, ",") + ")"
			for _, m := range []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Parse{Query: slow}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Sync{},
				&pgproto3.Query{String: "create temp table tt_reuse (x int)"},
				&pgproto3.Query{String: slow},
			} {
				fe.Send(m)
			}
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			want := "22012 Z CREATE TABLE Z SELECT 0 Z"
			if got := strings.Join(replies(t, fe, 3), " "); got != want {
				t.Errorf("replies %q, want %q", got, want)
			}
		})
	}
}

// TestTerminateAfterPipeline: a client that pipelines statements and ends
// with Terminate, without waiting for the replies, has every statement run,
// as PostgreSQL runs them. pgmoat must let the server read what was
// relayed before it closes the server connection: closing a socket with
// unread replies resets it, and the server would lose the rest.
func TestTerminateAfterPipeline(t *testing.T) {
	for _, relay := range relays {
		t.Run(relay, func(t *testing.T) {
			p := startRelayProxy(t, relay)
			su := superuser(t, p)
			ctx := context.Background()
			const marker = 917273
			su.Exec(ctx, "delete from orders where amount = $1", marker)
			defer su.Exec(ctx, "delete from orders where amount = $1", marker)
			cfg, err := pgconn.ParseConfig(p.dsn("acme_app", "acme_secret"))
			if err != nil {
				t.Fatal(err)
			}
			pc, err := pgconn.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			h, err := pc.Hijack()
			if err != nil {
				t.Fatal(err)
			}
			defer h.Conn.Close()
			h.Conn.SetDeadline(time.Now().Add(time.Minute)) // a guard, not a measurement

			// Replies the server sends while pgmoat ends the session, and
			// 3 MB of queries that keep its socket full meanwhile.
			var b []byte
			b, _ = (&pgproto3.Query{String: "select pg_sleep(0.1)"}).Encode(b)
			pad := strings.Repeat("p", 20000)
			for i := range 150 {
				b, _ = (&pgproto3.Query{String: fmt.Sprintf("select '%s' as c%d", pad, i%3)}).Encode(b)
			}
			b, _ = (&pgproto3.Query{String: fmt.Sprintf("insert into orders (tenant_id, customer_id, amount) values ('acme', 1, %d)", marker)}).Encode(b)
			b, _ = (&pgproto3.Terminate{}).Encode(b)
			read := make(chan error, 1)
			go func() { _, err := io.Copy(io.Discard, h.Conn); read <- err }()
			if _, err := h.Conn.Write(b); err != nil {
				t.Fatal(err)
			}
			if err := <-read; err != nil {
				t.Fatalf("reading until pgmoat closes: %v", err)
			}
			// pgmoat closed the client only after the server closed.
			var n int
			if err := su.QueryRow(ctx, "select count(*) from orders where amount = $1", marker).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Errorf("the INSERT pipelined before Terminate ran %d times, want 1", n)
			}
		})
	}
}

// TestLoopSurvivesPanic: a panic in a session's code on the loop fails that
// session only.
func TestLoopSurvivesPanic(t *testing.T) {
	c := &panicConn{}
	dispatch(c, func() { panic("boom") })
	if c.err == nil || !strings.Contains(c.err.Error(), "panic in session: boom") {
		t.Fatalf("fail(%v), want the panic", c.err)
	}
}

type panicConn struct{ err error }

func (c *panicConn) ready(int, uint32) {}
func (c *panicConn) fail(err error)    { c.err = err }
