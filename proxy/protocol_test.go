package proxy

// Protocol corners of issue 4 (the extended protocol in any order, startup
// parameters, relayed asynchronous messages), each checked end to end. The
// extended-protocol script runs through pgmoat and straight against
// PostgreSQL, and the two traces must be the same.

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmoat/pgmoat/config"
)

// rawConn connects with cfg and hands back the connection's raw protocol
// stream, ready for a query.
func rawConn(t *testing.T, cfg *pgconn.Config) *pgproto3.Frontend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Conn.Close() })
	// The guard only keeps a broken build from hanging the test run.
	h.Conn.SetDeadline(time.Now().Add(time.Minute))
	return h.Frontend
}

// trace sends msgs and describes every reply up to and including the one
// that ends the exchange: the ReadyForQuery answering the last Sync or
// Query, or without either (the client flushed and waits) the first
// PortalSuspended. Errors and notices are described by SQLSTATE, binary
// values in hex.
func trace(t *testing.T, fe *pgproto3.Frontend, msgs ...pgproto3.FrontendMessage) []string {
	t.Helper()
	ready := 0 // ReadyForQuery messages to wait for
	for _, m := range msgs {
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Query:
			ready++
		}
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var out []string
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %q: %v", out, err)
		}
		var s string
		switch m := msg.(type) {
		case *pgproto3.ParseComplete:
			s = "ParseComplete"
		case *pgproto3.BindComplete:
			s = "BindComplete"
		case *pgproto3.CloseComplete:
			s = "CloseComplete"
		case *pgproto3.ParameterDescription:
			s = fmt.Sprintf("ParameterDescription %v", m.ParameterOIDs)
		case *pgproto3.RowDescription:
			var cols []string
			for _, f := range m.Fields {
				cols = append(cols, fmt.Sprintf("%s/%d/%d", f.Name, f.DataTypeOID, f.Format))
			}
			s = "RowDescription " + strings.Join(cols, ",")
		case *pgproto3.NoData:
			s = "NoData"
		case *pgproto3.DataRow:
			var vals []string
			for _, v := range m.Values {
				vals = append(vals, hex.EncodeToString(v))
			}
			s = "DataRow " + strings.Join(vals, ",")
		case *pgproto3.CommandComplete:
			s = "CommandComplete " + string(m.CommandTag)
		case *pgproto3.PortalSuspended:
			s = "PortalSuspended"
		case *pgproto3.EmptyQueryResponse:
			s = "EmptyQueryResponse"
		case *pgproto3.ErrorResponse:
			s = "ErrorResponse " + m.Code
		case *pgproto3.NoticeResponse:
			s = "NoticeResponse " + m.Code
		case *pgproto3.ParameterStatus:
			s = "ParameterStatus " + m.Name + "=" + m.Value
		case *pgproto3.ReadyForQuery:
			s = "ReadyForQuery " + string(m.TxStatus)
		default:
			s = fmt.Sprintf("%T", msg)
		}
		out = append(out, s)
		switch msg.(type) {
		case *pgproto3.ReadyForQuery:
			if ready--; ready == 0 {
				return out
			}
		case *pgproto3.PortalSuspended:
			if ready == 0 {
				return out
			}
		}
	}
}

// TestExtendedProtocolTraces runs the extended protocol's corners through
// pgmoat as acme and straight against PostgreSQL as pgmoat's role with the
// tenant set at startup, and compares every reply: named and unnamed
// statements and portals, Describe of both, binary parameters and results,
// Execute with a row limit answered by PortalSuspended and resumed, a
// client that Flushes and waits before Sync, Close, an error mid-pipeline
// and the batches after it, a statement reused across batches, DEALLOCATE
// and DISCARD ALL, a NoticeResponse and a ParameterStatus.
func TestExtendedProtocolTraces(t *testing.T) {
	p := startProxy(t, nil)
	viaProxy, err := pgconn.ParseConfig(p.dsn("acme_app", "acme_secret"))
	if err != nil {
		t.Fatal(err)
	}
	direct, err := pgconn.ParseConfig(p.cluster.DSN("pgmoat", "pgmoat_secret", "app"))
	if err != nil {
		t.Fatal(err)
	}
	direct.RuntimeParams["app.current_tenant_id"] = "acme"

	int4 := func(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }
	orders := "select id, tenant_id from orders order by id"
	tenant := "select current_setting('app.current_tenant_id')"
	pbe := func(sql string) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{&pgproto3.Parse{Query: sql}, &pgproto3.Bind{}, &pgproto3.Execute{}}
	}
	sync := &pgproto3.Sync{}
	steps := []struct {
		name string
		msgs []pgproto3.FrontendMessage
	}{
		{"named statement and portal, binary, row limit, Flush before Sync", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "s1", Query: orders},
			&pgproto3.Describe{ObjectType: 'S', Name: "s1"},
			&pgproto3.Bind{DestinationPortal: "p1", PreparedStatement: "s1", ResultFormatCodes: []int16{1, 0}},
			&pgproto3.Execute{Portal: "p1", MaxRows: 2},
			&pgproto3.Flush{},
		}},
		{"resume the portal, Describe it, Close it", []pgproto3.FrontendMessage{
			&pgproto3.Describe{ObjectType: 'P', Name: "p1"},
			&pgproto3.Execute{Portal: "p1", MaxRows: 1},
			&pgproto3.Execute{Portal: "p1"},
			&pgproto3.Close{ObjectType: 'P', Name: "p1"},
			sync,
		}},
		{"unnamed statement, binary parameter", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "select $1::int4 + 1", ParameterOIDs: []uint32{23}},
			&pgproto3.Bind{ParameterFormatCodes: []int16{1}, Parameters: [][]byte{int4(41)}, ResultFormatCodes: []int16{1}},
			&pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{},
			sync,
		}},
		{"error mid-pipeline", slices.Concat(
			pbe(tenant), []pgproto3.FrontendMessage{sync},
			pbe("select 1/0"), pbe(orders), []pgproto3.FrontendMessage{sync},
		)},
		{"the batch after the error", append(pbe(tenant), sync)},
		{"named statement reused in a new batch", []pgproto3.FrontendMessage{
			&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{MaxRows: 1}, sync,
		}},
		{"DEALLOCATE", []pgproto3.FrontendMessage{&pgproto3.Query{String: "deallocate s1"}}},
		{"Bind of the deallocated statement", []pgproto3.FrontendMessage{
			&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, sync,
		}},
		{"DISCARD ALL", []pgproto3.FrontendMessage{&pgproto3.Query{String: "discard all"}}},
		{"extended query after DISCARD ALL", append(pbe(tenant), sync)},
		{"simple query after DISCARD ALL", []pgproto3.FrontendMessage{&pgproto3.Query{String: tenant}}},
		{"NoticeResponse", []pgproto3.FrontendMessage{&pgproto3.Query{String: "rollback"}}},
		{"ParameterStatus", []pgproto3.FrontendMessage{&pgproto3.Query{String: "set application_name = 'pgmoat-trace'"}}},
		{"Close of a statement, empty query", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "s2", Query: ""}, &pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{},
			&pgproto3.Close{ObjectType: 'S', Name: "s2"}, sync,
		}},
	}
	proxied, straight := rawConn(t, viaProxy), rawConn(t, direct)
	var all []string
	for _, st := range steps {
		got, want := trace(t, proxied, st.msgs...), trace(t, straight, st.msgs...)
		if !slices.Equal(got, want) {
			t.Errorf("%s:\nthrough pgmoat: %q\ndirectly:       %q", st.name, got, want)
		}
		all = append(all, got...)
	}
	// The traces hold what the script is about (not only that both sides
	// agree): rows of acme only, the suspension, the error, the notice.
	acme := hex.EncodeToString([]byte("acme"))
	for _, want := range []string{"PortalSuspended", "ErrorResponse 22012", "ErrorResponse 26000", "NoticeResponse 25P01",
		"ParameterStatus application_name=pgmoat-trace", "DataRow " + acme, "DataRow " + hex.EncodeToString(int4(42)), "EmptyQueryResponse"} {
		if !slices.Contains(all, want) {
			t.Errorf("no %q in the trace through pgmoat: %q", want, all)
		}
	}
	for _, s := range all {
		if v, ok := strings.CutPrefix(s, "DataRow "); ok && strings.Contains(v, ",") && !strings.HasSuffix(v, ","+acme) {
			t.Errorf("a row of another tenant: %s", s)
		}
	}
}

// TestNotificationRelayed: LISTEN is refused to tenants (TestCompatListen),
// but an admin session may listen, and the server's NotificationResponse
// reaches it through pgmoat.
func TestNotificationRelayed(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	admin := p.connect(t, "dba", "dba_secret", pgx.QueryExecModeSimpleProtocol)
	if _, err := admin.Exec(ctx, "listen pgmoat_relay"); err != nil {
		t.Fatal(err)
	}
	if err := p.cluster.Exec(ctx, "app", "notify pgmoat_relay, 'hello'"); err != nil {
		t.Fatal(err)
	}
	// The guard only keeps a broken build from hanging the test run.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	n, err := admin.WaitForNotification(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Channel != "pgmoat_relay" || n.Payload != "hello" {
		t.Errorf("notification %+v, want hello on pgmoat_relay", n)
	}
}

// TestStartupParameters: the safe startup parameters reach the server; a
// replication connection is refused (42501); GSSENCRequest is answered 'N'
// and the client may go on in plaintext; bytes sent after an SSLRequest,
// before the answer, are refused (CVE-2021-23214).
func TestStartupParameters(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()

	t.Run("passed through", func(t *testing.T) {
		params := map[string]string{
			"application_name":   "pgmoat test",
			"TimeZone":           "Asia/Tokyo",
			"DateStyle":          "SQL, DMY",
			"extra_float_digits": "2",
			"IntervalStyle":      "iso_8601",
		}
		cfg, err := pgx.ParseConfig(p.dsn("acme_app", "acme_secret"))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range params {
			cfg.RuntimeParams[k] = v
		}
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		for k, v := range params {
			var got string
			if err := conn.QueryRow(ctx, "select current_setting($1)", k).Scan(&got); err != nil || got != v {
				t.Errorf("%s = %q, %v; want %q", k, got, err, v)
			}
		}
		wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), "acme")
	})

	// A parameter the server refuses at login fails the client's login with
	// the server's SQLSTATE, as it would directly.
	t.Run("refused by the server", func(t *testing.T) {
		for _, tt := range []struct{ name, value, code string }{
			{"TimeZone", "Nowhere/Atlantis", "22023"},
			{"DateStyle", "sideways", "22023"},
			{"lc_messages", "C", "42501"}, // a superuser-only setting
		} {
			cfg, err := pgx.ParseConfig(p.dsn("acme_app", "acme_secret"))
			if err != nil {
				t.Fatal(err)
			}
			cfg.RuntimeParams[tt.name] = tt.value
			if _, err := pgx.ConnectConfig(ctx, cfg); sqlstate(err) != tt.code {
				t.Errorf("%s=%s: %v, want %s", tt.name, tt.value, err, tt.code)
			}
		}
	})

	t.Run("replication refused", func(t *testing.T) {
		for _, mode := range []string{"database", "true"} {
			cfg, err := pgx.ParseConfig(p.dsn("acme_app", "acme_secret"))
			if err != nil {
				t.Fatal(err)
			}
			cfg.RuntimeParams["replication"] = mode
			if _, err := pgx.ConnectConfig(ctx, cfg); sqlstate(err) != "42501" {
				t.Errorf("replication=%s: %v, want 42501", mode, err)
			}
		}
	})

	encode := func(msg pgproto3.FrontendMessage) []byte {
		b, err := msg.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	startup := encode(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "acme_app", "database": "app"}})

	t.Run("GSSENCRequest answered N", func(t *testing.T) {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute)) // a guard, not a timing
		if _, err := c.Write(encode(&pgproto3.GSSEncRequest{})); err != nil {
			t.Fatal(err)
		}
		var answer [1]byte
		if _, err := c.Read(answer[:]); err != nil || answer[0] != 'N' {
			t.Fatalf("answer %q, %v; want N", answer[:], err)
		}
		if _, err := c.Write(startup); err != nil {
			t.Fatal(err)
		}
		if _, err := receive[*pgproto3.AuthenticationSASL](pgproto3.NewFrontend(c, c)); err != nil {
			t.Fatalf("startup after N: %v", err)
		}
	})

	t.Run("data after SSLRequest", func(t *testing.T) {
		if code := rawExchange(t, p.addr, append(encode(&pgproto3.SSLRequest{}), startup...)); code != "08P01" {
			t.Errorf("SQLSTATE %q, want 08P01", code)
		}
	})
}

// TestClientMessageTooLarge: a client message over limits.max_message_size
// closes that connection with 08P01; other sessions carry on.
func TestClientMessageTooLarge(t *testing.T) {
	p := startProxy(t, func(c *config.Config) { c.Limits.MaxMessageSize = 1 << 20 })
	ctx := context.Background()
	other := p.connect(t, "globex_app", "globex_secret", pgx.QueryExecModeCacheStatement)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			conn := p.connect(t, "acme_app", "acme_secret", mode)
			big := strings.Repeat("x", 2<<20)
			if _, err := conn.Exec(ctx, "select $1::text", big); sqlstate(err) != "08P01" {
				t.Errorf("a 2 MiB message: %v, want 08P01", err)
			}
			if !conn.IsClosed() {
				if _, err := conn.Exec(ctx, "select 1"); err == nil {
					t.Error("the connection is still usable")
				}
			}
		})
	}
	wantOnly(t, tenantsOf(t, other, "select tenant_id from orders"), "globex")
}
