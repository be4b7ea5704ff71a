package proxy

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

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
		{"client connections", m.clientConns, 1},
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
		"pgmoat_auth_failures_total":      4,
		"pgmoat_statements_total":         4,
		"pgmoat_config_reloads_total":     2,
	} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != want {
			t.Errorf("%s: %d series (%v), want %d", name, n, err, want)
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP pgmoat_client_connections Client connections currently open.
# TYPE pgmoat_client_connections gauge
pgmoat_client_connections 1
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
