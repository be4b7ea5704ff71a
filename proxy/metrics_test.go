package proxy

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

func newTestMetrics(t *testing.T, tenantCap int) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return NewMetrics(reg, tenantCap), reg
}

// gatherOne returns the metric family name from reg, or nil.
func gatherOne(t *testing.T, reg *prometheus.Registry, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

// labelValues returns the values of label in family name, one per series.
func labelValues(t *testing.T, reg *prometheus.Registry, name, label string) []string {
	t.Helper()
	mf := gatherOne(t, reg, name)
	if mf == nil {
		return nil
	}
	var vals []string
	for _, m := range mf.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				vals = append(vals, lp.GetValue())
			}
		}
	}
	return vals
}

func TestMetricsCounters(t *testing.T) {
	m, reg := newTestMetrics(t, 10)

	m.ClientConnected()
	m.ClientConnected()
	m.ClientConnected()
	m.ClientDisconnected(ResultOK)
	m.ClientDisconnected(ResultAuthFailed)
	m.AuthFailed(AuthReasonBadPassword)
	m.AuthFailed(AuthReasonBadPassword)
	m.AuthFailed(AuthReasonUnknownUser)
	m.Statement(DecisionAllowed)
	m.Statement(DecisionAllowed)
	m.Statement(DecisionBlocked)
	m.Statement(DecisionAdmin)
	m.Injected()
	m.Injected()
	m.UpstreamConnected()
	m.UpstreamConnected()
	m.UpstreamDisconnected()
	m.UpstreamConnectFailed()
	m.ConfigReloaded(errors.New("bad config"))

	tests := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"client connections authenticating", m.connStates[stateAuthenticating], 1},
		{"result ok", m.clientConnsTotal.WithLabelValues(ResultOK), 1},
		{"result auth_failed", m.clientConnsTotal.WithLabelValues(ResultAuthFailed), 1},
		{"result refused", m.clientConnsTotal.WithLabelValues(ResultRefused), 0},
		{"auth bad_password", m.authFailures.WithLabelValues(AuthReasonBadPassword), 2},
		{"auth unknown_user", m.authFailures.WithLabelValues(AuthReasonUnknownUser), 1},
		{"auth timeout", m.authFailures.WithLabelValues(AuthReasonTimeout), 0},
		{"allowed", m.statements.WithLabelValues(DecisionAllowed), 2},
		{"blocked", m.statements.WithLabelValues(DecisionBlocked), 1},
		{"admin", m.statements.WithLabelValues(DecisionAdmin), 1},
		{"audited", m.statements.WithLabelValues(DecisionAudited), 0},
		{"injections", m.injections, 2},
		{"upstream connections", m.upstreamConns, 1},
		{"upstream connect errors", m.upstreamErrors, 1},
		{"reload failures", m.reloads.WithLabelValues(ReloadFailure), 1},
		{"last reload successful", m.reloadOK, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := testutil.ToFloat64(tt.c); got != tt.want {
				t.Errorf("= %v, want %v", got, tt.want)
			}
		})
	}

	// The closed-set series exist before they are first counted.
	for name, want := range map[string]int{
		"pgmoat_client_connections_total": 5,
		"pgmoat_client_connections":       3,
		"pgmoat_auth_failures_total":      5,
		"pgmoat_statements_total":         4,
		"pgmoat_config_reloads_total":     2,
		"pgmoat_catalog_refreshes_total":  2,
	} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != want {
			t.Errorf("%s: %d series (%v), want %d", name, n, err, want)
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP pgmoat_client_connections Client connections currently open, by state: authenticating (not ready yet, or closing), idle (waiting for the client), active (a statement in progress).
# TYPE pgmoat_client_connections gauge
pgmoat_client_connections{state="active"} 0
pgmoat_client_connections{state="authenticating"} 1
pgmoat_client_connections{state="idle"} 0
`), "pgmoat_client_connections"); err != nil {
		t.Error(err)
	}
}

func TestMetricsTenantCap(t *testing.T) {
	m, reg := newTestMetrics(t, 2)
	for _, tenant := range []string{"a", "b", "c", "a", "d", "c"} {
		m.Blocked(tenant, "unprotected_relation", "public.audit_raw")
	}
	want := `
# HELP pgmoat_blocked_statements_total Statements refused by the policy, by tenant, reason and relation (tenant and relation capped; the rest are "other").
# TYPE pgmoat_blocked_statements_total counter
pgmoat_blocked_statements_total{reason="unprotected_relation",relation="public.audit_raw",tenant="a"} 2
pgmoat_blocked_statements_total{reason="unprotected_relation",relation="public.audit_raw",tenant="b"} 1
pgmoat_blocked_statements_total{reason="unprotected_relation",relation="public.audit_raw",tenant="other"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "pgmoat_blocked_statements_total"); err != nil {
		t.Error(err)
	}
}

func TestMetricsRelationCap(t *testing.T) {
	m, reg := newTestMetrics(t, 10)
	m.Blocked("a", "setting", "") // no object: kept, does not use up the cap
	for i := range relationLabelCap + 50 {
		m.Blocked("a", "unknown_relation", fmt.Sprintf("public.t%d", i))
	}
	rels := labelValues(t, reg, "pgmoat_blocked_statements_total", "relation")
	if len(rels) != relationLabelCap+2 { // the cap, "other" and ""
		t.Errorf("%d relation values, want %d", len(rels), relationLabelCap+2)
	}
	if got := testutil.ToFloat64(m.blocked.WithLabelValues("a", "unknown_relation", otherLabel)); got != 50 {
		t.Errorf("other = %v, want 50", got)
	}
	if got := testutil.ToFloat64(m.blocked.WithLabelValues("a", "setting", "")); got != 1 {
		t.Errorf(`relation "" = %v, want 1`, got)
	}
}

func TestMetricsTenantCapZero(t *testing.T) {
	m, reg := newTestMetrics(t, 0)
	m.Blocked("a", "ddl", "")
	m.Blocked("b", "ddl", "")
	if got := labelValues(t, reg, "pgmoat_blocked_statements_total", "tenant"); len(got) != 1 || got[0] != otherLabel {
		t.Errorf("tenant values %q, want [other]", got)
	}
}

// Many sessions reporting new tenants at once never exceed the cap.
func TestMetricsTenantCapConcurrent(t *testing.T) {
	const tenantCap = 5
	m, reg := newTestMetrics(t, tenantCap)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				m.Blocked(fmt.Sprintf("t%d-%d", g, i), "ddl", "")
			}
		})
	}
	wg.Wait()
	if got := labelValues(t, reg, "pgmoat_blocked_statements_total", "tenant"); len(got) != tenantCap+1 {
		t.Errorf("%d tenant values %q, want %d", len(got), got, tenantCap+1)
	}
	var total float64
	mf := gatherOne(t, reg, "pgmoat_blocked_statements_total")
	for _, s := range mf.GetMetric() {
		total += s.GetCounter().GetValue()
	}
	if total != 8*50 {
		t.Errorf("total = %v, want %d", total, 8*50)
	}
}

func TestMetricsPolicyDecision(t *testing.T) {
	m, reg := newTestMetrics(t, 10)
	m.PolicyDecision(3 * time.Microsecond)
	m.PolicyDecision(2 * time.Millisecond)
	m.PolicyDecision(time.Second) // over the last bucket: only in +Inf
	mf := gatherOne(t, reg, "pgmoat_policy_decision_seconds")
	if mf == nil {
		t.Fatal("histogram missing")
	}
	h := mf.GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 3 {
		t.Errorf("count = %d, want 3", h.GetSampleCount())
	}
	b := h.GetBucket()
	if first, last := b[0].GetUpperBound(), b[len(b)-1].GetUpperBound(); first != 1e-6 || last != 1e-2 {
		t.Errorf("buckets %v..%v, want 1e-6..1e-2", first, last)
	}
	for _, bk := range b {
		if bk.GetUpperBound() == 5e-6 && bk.GetCumulativeCount() != 1 {
			t.Errorf("le=5µs count %d, want 1", bk.GetCumulativeCount())
		}
		if bk.GetUpperBound() == 1e-2 && bk.GetCumulativeCount() != 2 {
			t.Errorf("le=10ms count %d, want 2", bk.GetCumulativeCount())
		}
	}
}

func TestMetricsPolicyCache(t *testing.T) {
	m, reg := newTestMetrics(t, 10)
	names := []string{"pgmoat_policy_cache_hits_total", "pgmoat_policy_cache_misses_total", "pgmoat_policy_cache_entries"}
	if n, err := testutil.GatherAndCount(reg, names...); err != nil || n != 0 {
		t.Errorf("before ObservePolicyCache: %d series (%v), want 0", n, err)
	}
	m.ObservePolicyCache(func() (uint64, uint64, int) { return 7, 3, 5 })
	want := `
# HELP pgmoat_policy_cache_entries Decisions currently cached.
# TYPE pgmoat_policy_cache_entries gauge
pgmoat_policy_cache_entries 5
# HELP pgmoat_policy_cache_hits_total Policy decisions served from the cache.
# TYPE pgmoat_policy_cache_hits_total counter
pgmoat_policy_cache_hits_total 7
# HELP pgmoat_policy_cache_misses_total Policy decisions that had to parse and analyse the text.
# TYPE pgmoat_policy_cache_misses_total counter
pgmoat_policy_cache_misses_total 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// A reload's new cache replaces the old one.
	m.ObservePolicyCache(func() (uint64, uint64, int) { return 1, 1, 1 })
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP pgmoat_policy_cache_hits_total Policy decisions served from the cache.
# TYPE pgmoat_policy_cache_hits_total counter
pgmoat_policy_cache_hits_total 1
`), "pgmoat_policy_cache_hits_total"); err != nil {
		t.Error(err)
	}
}

func TestMetricsBuildInfo(t *testing.T) {
	m, reg := newTestMetrics(t, 10)
	m.SetBuildInfo("v0.0.1")
	m.SetBuildInfo("v1.2.3")
	want := fmt.Sprintf(`
# HELP pgmoat_build_info Always 1; labelled with the pgmoat version and the Go version that built it.
# TYPE pgmoat_build_info gauge
pgmoat_build_info{goversion=%q,version="v1.2.3"} 1
`, runtime.Version())
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "pgmoat_build_info"); err != nil {
		t.Error(err)
	}
}

func TestMetricsConfigReloaded(t *testing.T) {
	m, _ := newTestMetrics(t, 10)
	if got := testutil.ToFloat64(m.reloadOK); got != 1 {
		t.Errorf("at start last_reload_successful = %v, want 1", got)
	}
	m.ConfigReloaded(errors.New("invalid"))
	m.ConfigReloaded(nil)
	if got := testutil.ToFloat64(m.reloadOK); got != 1 {
		t.Errorf("after a good reload last_reload_successful = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.reloads.WithLabelValues(ReloadSuccess)); got != 1 {
		t.Errorf("successes = %v, want 1", got)
	}
}

// states returns the pgmoat_client_connections series as
// [authenticating, idle, active].
func states(m *Metrics) [numConnStates]float64 {
	var s [numConnStates]float64
	for i, g := range m.connStates {
		s[i] = testutil.ToFloat64(g)
	}
	return s
}

func statementCount(t *testing.T, reg *prometheus.Registry) uint64 {
	t.Helper()
	mf := gatherOne(t, reg, "pgmoat_statement_duration_seconds")
	if mf == nil {
		t.Fatal("pgmoat_statement_duration_seconds missing")
	}
	return mf.GetMetric()[0].GetHistogram().GetSampleCount()
}

func TestBatchClock(t *testing.T) {
	type step struct {
		op   string // "sent", "answered", "close"
		n    int    // how many times
		want [numConnStates]float64
	}
	tests := []struct {
		name     string
		settled  bool // the rewrite reports that no reply is owed
		steps    []step
		observed uint64
	}{
		{"one batch", false, []step{
			{"sent", 1, [3]float64{0, 0, 1}},
			{"answered", 1, [3]float64{0, 1, 0}},
		}, 1},
		{"pipelined", false, []step{
			{"sent", 3, [3]float64{0, 0, 1}},
			{"answered", 2, [3]float64{0, 0, 1}},
			{"answered", 1, [3]float64{0, 1, 0}},
		}, 3},
		{"more outstanding than the ring times", false, []step{
			{"sent", batchRing + 5, [3]float64{0, 0, 1}},
			{"answered", batchRing + 5, [3]float64{0, 1, 0}},
			{"sent", 1, [3]float64{0, 0, 1}},
			{"answered", 1, [3]float64{0, 1, 0}},
		}, batchRing + 1},
		{"ReadyForQuery with nothing outstanding", false, []step{
			{"answered", 1, [3]float64{0, 1, 0}},
		}, 0},
		// A Sync the server ignored: without settled the session would
		// stay active; with it the next ReadyForQuery settles everything.
		{"unanswered batch end, settled", true, []step{
			{"sent", 2, [3]float64{0, 0, 1}},
			{"answered", 1, [3]float64{0, 1, 0}},
			{"sent", 1, [3]float64{0, 0, 1}},
			{"answered", 1, [3]float64{0, 1, 0}},
		}, 2},
		{"unanswered batch end, not settled", false, []step{
			{"sent", 2, [3]float64{0, 0, 1}},
			{"answered", 1, [3]float64{0, 0, 1}},
		}, 1},
		{"close while active", false, []step{
			{"sent", 1, [3]float64{0, 0, 1}},
			{"close", 2, [3]float64{1, 0, 0}},
			{"answered", 1, [3]float64{1, 0, 0}},
			{"sent", 1, [3]float64{1, 0, 0}},
		}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, reg := newTestMetrics(t, 10)
			m.ClientConnected()
			b := newBatchClock(m, func() bool { return tt.settled })
			if got := states(m); got != [3]float64{0, 1, 0} {
				t.Fatalf("after ready: states %v, want idle", got)
			}
			for i, st := range tt.steps {
				for range st.n {
					switch st.op {
					case "sent":
						b.sent(time.Now())
					case "answered":
						b.answered()
					case "close":
						b.close()
					}
				}
				if got := states(m); got != st.want {
					t.Errorf("step %d (%s x%d): states [authenticating idle active] = %v, want %v", i, st.op, st.n, got, st.want)
				}
			}
			if got := statementCount(t, reg); got != tt.observed {
				t.Errorf("%d durations observed, want %d", got, tt.observed)
			}
			b.close()
			m.ClientDisconnected(ResultOK)
			if got := states(m); got != [3]float64{} {
				t.Errorf("after close: states %v, want all 0", got)
			}
		})
	}
}

func TestMetricsBytesAndRefreshes(t *testing.T) {
	m, _ := newTestMetrics(t, 10)
	m.ClientBytesReceived(100)
	m.ClientBytesReceived(0)
	m.ClientBytesReceived(-1) // ignored: a counter only goes up
	m.ClientBytesSent(7)
	m.CatalogRefreshed(nil)
	m.CatalogRefreshed(nil)
	m.CatalogRefreshed(errors.New("connection refused"))
	for name, tt := range map[string]struct {
		c    prometheus.Collector
		want float64
	}{
		"received":          {m.bytesReceived, 100},
		"sent":              {m.bytesSent, 7},
		"refresh successes": {m.refreshes.WithLabelValues(ReloadSuccess), 2},
		"refresh failures":  {m.refreshes.WithLabelValues(ReloadFailure), 1},
	} {
		if got := testutil.ToFloat64(tt.c); got != tt.want {
			t.Errorf("%s = %v, want %v", name, got, tt.want)
		}
	}
}

// However many tenants and relations are blocked, the blocked-statement
// series stay within (tenant cap + other) x reasons x (relation cap + other
// + none), and every block is counted in one of them.
func TestMetricsCapsBoundSeries(t *testing.T) {
	const tenantCap = 5
	m, reg := newTestMetrics(t, tenantCap)
	reasons := []string{"unprotected_relation", "unknown_relation", "ddl"}
	calls := 0
	for i := range 2000 {
		for j, reason := range reasons {
			relation := fmt.Sprintf("public.t%d", (i*7+j)%(3*relationLabelCap))
			if i%10 == 0 {
				relation = "" // violations without an object
			}
			m.Blocked(fmt.Sprintf("tenant%d", i), reason, relation)
			calls++
		}
	}
	mf := gatherOne(t, reg, "pgmoat_blocked_statements_total")
	limit := (tenantCap + 1) * len(reasons) * (relationLabelCap + 2)
	if n := len(mf.GetMetric()); n > limit {
		t.Errorf("%d series, want at most %d", n, limit)
	}
	var total float64
	for _, s := range mf.GetMetric() {
		total += s.GetCounter().GetValue()
	}
	if total != float64(calls) {
		t.Errorf("counted %v blocks, want %d", total, calls)
	}
	if got := labelValues(t, reg, "pgmoat_blocked_statements_total", "tenant"); len(uniq(got)) != tenantCap+1 {
		t.Errorf("tenant values %v, want %d", uniq(got), tenantCap+1)
	}
	if got := uniq(labelValues(t, reg, "pgmoat_blocked_statements_total", "relation")); len(got) != relationLabelCap+2 {
		t.Errorf("%d relation values, want %d", len(got), relationLabelCap+2)
	}
}

func uniq(vs []string) map[string]bool {
	u := map[string]bool{}
	for _, v := range vs {
		u[v] = true
	}
	return u
}

// Through the proxy: every simple Query is timed once, the bytes received
// are exactly the client's messages, and sessions move between idle and
// active and leave no trace when they close.
func TestMetricsEndToEnd(t *testing.T) {
	p := startProxy(t, nil)
	m, ctx := p.metrics, context.Background()
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	if got := states(m); got != [3]float64{0, 1, 0} {
		t.Fatalf("after connect: states %v, want one idle", got)
	}

	count0 := statementCount(t, p.reg)
	recv0, sent0 := testutil.ToFloat64(m.bytesReceived), testutil.ToFloat64(m.bytesSent)
	queries := []string{
		"select count(*) from orders",
		"select * from audit_raw", // blocked: timed and counted all the same
		"begin",
		"select 1",
		"commit",
	}
	wantBytes := 0
	for _, q := range queries {
		conn.Exec(ctx, q)
		wantBytes += 1 + 4 + len(q) + 1 // a Query message: type, length, text, NUL
	}
	if got := statementCount(t, p.reg) - count0; got != uint64(len(queries)) {
		t.Errorf("%d statement durations observed, want %d", got, len(queries))
	}
	if got := testutil.ToFloat64(m.bytesReceived) - recv0; got != float64(wantBytes) {
		t.Errorf("bytes received = %v, want %d", got, wantBytes)
	}
	if got := testutil.ToFloat64(m.bytesSent) - sent0; got <= 0 {
		t.Errorf("bytes sent = %v, want > 0", got)
	}

	// A pgx batch in the extended protocol is one Sync: one duration.
	ext := p.connect(t, "globex_app", "globex_secret", pgx.QueryExecModeCacheStatement)
	count0 = statementCount(t, p.reg)
	b := &pgx.Batch{}
	for range 3 {
		b.Queue("select count(*) from orders where amount > $1", 0)
	}
	if err := ext.SendBatch(ctx, b).Close(); err != nil {
		t.Fatal(err)
	}
	if got := statementCount(t, p.reg) - count0; got < 1 {
		t.Errorf("%d durations for the batch, want at least 1", got)
	}
	if got := states(m); got != [3]float64{0, 2, 0} {
		t.Errorf("after the batch: states %v, want two idle", got)
	}

	// A session waiting on a lock is active until its ReadyForQuery.
	holder := p.connect(t, "dba", "dba_secret", pgx.QueryExecModeSimpleProtocol)
	waiter := p.connect(t, "dba", "dba_secret", pgx.QueryExecModeSimpleProtocol)
	if _, err := holder.Exec(ctx, "select pg_advisory_lock(4242)"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := waiter.Exec(ctx, "select pg_advisory_lock(4242)")
		done <- err
	}()
	waitFor(t, func() bool { return states(m) == [3]float64{0, 3, 1} })
	if _, err := holder.Exec(ctx, "select pg_advisory_unlock(4242)"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := states(m); got != [3]float64{0, 4, 0} {
		t.Errorf("after the lock: states %v, want four idle", got)
	}

	for _, c := range []*pgx.Conn{conn, ext, holder, waiter} {
		c.Close(ctx)
	}
	waitFor(t, func() bool { return states(m) == [3]float64{} })
}

// A Query the server skips (sent after an extended-protocol error, before
// Sync) gets no ReadyForQuery; the session must not stay active.
func TestMetricsSkippedBatchEnd(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	nc := conn.PgConn().Conn()
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.Parse{Query: "selec 1"}) // refused: the server skips to Sync
	fe.Send(&pgproto3.Query{String: "select 1"})
	fe.Send(&pgproto3.Sync{})
	fe.Send(&pgproto3.Query{String: "select 2"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for ready := 0; ready < 2; {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			ready++
		}
	}
	if got := states(p.metrics); got != [3]float64{0, 1, 0} {
		t.Errorf("states %v, want one idle", got)
	}
}

// The per-batch work on the relay path allocates nothing.
func TestBatchClockAllocations(t *testing.T) {
	m, _ := newTestMetrics(t, 10)
	m.ClientConnected()
	idle := func() bool { return true }
	b := newBatchClock(m, idle)
	allocs := testing.AllocsPerRun(1000, func() {
		b.sent(time.Now())
		b.sent(time.Now())
		b.answered()
		b.answered()
		m.ClientBytesReceived(120)
		m.ClientBytesSent(4000)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch, want 0", allocs)
	}
}
