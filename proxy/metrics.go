package proxy

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Client connection results: the closed set of values of the
// pgmoat_client_connections_total result label.
const (
	ResultOK            = "ok"
	ResultAuthFailed    = "auth_failed"
	ResultProtocolError = "protocol_error"
	ResultUpstreamError = "upstream_error"
	ResultRefused       = "refused" // over max_client_connections, or shutting down
)

// Statement decisions: the closed set of values of the
// pgmoat_statements_total decision label.
const (
	DecisionAllowed = "allowed"
	DecisionBlocked = "blocked"
	DecisionAudited = "audited" // a violation let through in audit mode
	DecisionAdmin   = "admin"   // run by an admin identity, bypassing the policy
)

// Config reload results: the pgmoat_config_reloads_total result label.
const (
	ReloadSuccess = "success"
	ReloadFailure = "failure"
)

const (
	// otherLabel stands for every tenant or relation past the label cap.
	otherLabel = "other"
	// relationLabelCap bounds the distinct relation label values.
	relationLabelCap = 200
)

// Metrics are pgmoat's Prometheus metrics. All methods are safe for
// concurrent use. Label values are constants from closed sets, except tenant
// and relation, which are capped.
//
//	name                                   type       labels
//	pgmoat_client_connections              gauge
//	pgmoat_client_connections_total        counter    result (Result*)
//	pgmoat_auth_failures_total             counter    reason (AuthReason*)
//	pgmoat_statements_total                counter    decision (Decision*)
//	pgmoat_blocked_statements_total        counter    tenant (capped), reason (policy.Reason), relation (capped at 200)
//	pgmoat_tenant_injections_total         counter
//	pgmoat_upstream_connections            gauge
//	pgmoat_upstream_connect_errors_total   counter
//	pgmoat_policy_cache_hits_total         counter    read from ObservePolicyCache's func
//	pgmoat_policy_cache_misses_total       counter    read from ObservePolicyCache's func
//	pgmoat_policy_cache_entries            gauge      read from ObservePolicyCache's func
//	pgmoat_policy_decision_seconds         histogram  1µs..10ms
//	pgmoat_config_reloads_total            counter    result (Reload*)
//	pgmoat_config_last_reload_successful   gauge      1 or 0
//	pgmoat_build_info                      gauge      version, goversion; always 1
type Metrics struct {
	clientConns      prometheus.Gauge
	clientConnsTotal *prometheus.CounterVec
	authFailures     *prometheus.CounterVec
	statements       *prometheus.CounterVec
	blocked          *prometheus.CounterVec
	injections       prometheus.Counter
	upstreamConns    prometheus.Gauge
	upstreamErrors   prometheus.Counter
	decisionSeconds  prometheus.Histogram
	reloads          *prometheus.CounterVec
	reloadOK         prometheus.Gauge
	buildInfo        *prometheus.GaugeVec
	policyCache      *cacheCollector

	tenants, relations *labelCap
}

// NewMetrics creates the metrics and registers them on reg; it panics if
// they are already registered there (a wiring bug). At most tenantCap
// distinct tenants get their own label value, the rest are "other";
// tenantCap <= 0 counts every tenant as "other".
func NewMetrics(reg prometheus.Registerer, tenantCap int) *Metrics {
	m := &Metrics{
		clientConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgmoat_client_connections",
			Help: "Client connections currently open.",
		}),
		clientConnsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgmoat_client_connections_total",
			Help: "Client connections closed, by how they ended.",
		}, []string{"result"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgmoat_auth_failures_total",
			Help: "Failed client authentications, by reason.",
		}, []string{"reason"}),
		statements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgmoat_statements_total",
			Help: "Client statements, by policy decision.",
		}, []string{"decision"}),
		blocked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgmoat_blocked_statements_total",
			Help: "Statements refused by the policy, by tenant, reason and relation (tenant and relation capped; the rest are \"other\").",
		}, []string{"tenant", "reason", "relation"}),
		injections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgmoat_tenant_injections_total",
			Help: "Tenant settings injected into transactions.",
		}),
		upstreamConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgmoat_upstream_connections",
			Help: "Upstream server connections currently open.",
		}),
		upstreamErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgmoat_upstream_connect_errors_total",
			Help: "Failed attempts to connect to the upstream server.",
		}),
		decisionSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pgmoat_policy_decision_seconds",
			Help: "Time to reach a policy decision for one query text, cache lookups included.",
			Buckets: []float64{
				1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
			},
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgmoat_config_reloads_total",
			Help: "Configuration reloads, by result.",
		}, []string{"result"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgmoat_config_last_reload_successful",
			Help: "Whether the last configuration reload succeeded (1) or was refused (0).",
		}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgmoat_build_info",
			Help: "Always 1; labelled with the pgmoat version and the Go version that built it.",
		}, []string{"version", "goversion"}),
		policyCache: newCacheCollector(),
		tenants:     newLabelCap(tenantCap),
		relations:   newLabelCap(relationLabelCap),
	}
	reg.MustRegister(
		m.clientConns, m.clientConnsTotal, m.authFailures, m.statements, m.blocked,
		m.injections, m.upstreamConns, m.upstreamErrors, m.decisionSeconds,
		m.reloads, m.reloadOK, m.buildInfo, m.policyCache,
	)

	// Create the closed-set series up front, so that they read 0 rather
	// than being absent (rate() and alerts need the series to exist).
	for _, r := range []string{ResultOK, ResultAuthFailed, ResultProtocolError, ResultUpstreamError, ResultRefused} {
		m.clientConnsTotal.WithLabelValues(r)
	}
	for _, r := range []string{AuthReasonUnknownUser, AuthReasonBadPassword, AuthReasonProtocol, AuthReasonTimeout} {
		m.authFailures.WithLabelValues(r)
	}
	for _, d := range []string{DecisionAllowed, DecisionBlocked, DecisionAudited, DecisionAdmin} {
		m.statements.WithLabelValues(d)
	}
	for _, r := range []string{ReloadSuccess, ReloadFailure} {
		m.reloads.WithLabelValues(r)
	}
	m.reloadOK.Set(1) // the config loaded at startup is valid, or we would not be running
	return m
}

// ClientConnected counts a client connection opening.
func (m *Metrics) ClientConnected() { m.clientConns.Inc() }

// ClientDisconnected counts a client connection closing, by result (a
// Result* constant). Call it once per ClientConnected.
func (m *Metrics) ClientDisconnected(result string) {
	m.clientConns.Dec()
	m.clientConnsTotal.WithLabelValues(result).Inc()
}

// AuthFailed counts a failed authentication; reason is an AuthReason*
// constant (AuthError.Reason).
func (m *Metrics) AuthFailed(reason string) { m.authFailures.WithLabelValues(reason).Inc() }

// Statement counts one statement by decision (a Decision* constant).
func (m *Metrics) Statement(decision string) { m.statements.WithLabelValues(decision).Inc() }

// Blocked counts a statement refused by the policy. reason is a
// policy.Reason; relation is the violation's object ("" if none). Tenants
// and relations beyond their caps are counted as "other".
func (m *Metrics) Blocked(tenant, reason, relation string) {
	m.blocked.WithLabelValues(m.tenants.value(tenant), reason, m.relations.value(relation)).Inc()
}

// Injected counts one injection of the tenant setting.
func (m *Metrics) Injected() { m.injections.Inc() }

// UpstreamConnected counts an upstream connection opening.
func (m *Metrics) UpstreamConnected() { m.upstreamConns.Inc() }

// UpstreamDisconnected counts an upstream connection closing; call it once
// per UpstreamConnected.
func (m *Metrics) UpstreamDisconnected() { m.upstreamConns.Dec() }

// UpstreamConnectFailed counts a failed upstream connection attempt.
func (m *Metrics) UpstreamConnectFailed() { m.upstreamErrors.Inc() }

// PolicyDecision observes how long one policy decision took.
func (m *Metrics) PolicyDecision(d time.Duration) { m.decisionSeconds.Observe(d.Seconds()) }

// ConfigReloaded counts a configuration reload; err is why it was refused,
// or nil.
func (m *Metrics) ConfigReloaded(err error) {
	if err != nil {
		m.reloads.WithLabelValues(ReloadFailure).Inc()
		m.reloadOK.Set(0)
		return
	}
	m.reloads.WithLabelValues(ReloadSuccess).Inc()
	m.reloadOK.Set(1)
}

// SetBuildInfo sets pgmoat_build_info for this version; call it once at
// startup.
func (m *Metrics) SetBuildInfo(version string) {
	m.buildInfo.Reset()
	m.buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
}

// ObservePolicyCache makes the policy cache metrics read f at every scrape.
// f returns cumulative hits and misses and the current entry count; it must
// be safe for concurrent use and cheap. Calling it again (a reload that
// builds a new cache) replaces f; counters that restart from zero then are
// read by Prometheus as a counter reset. Until it is called the cache
// metrics are absent.
func (m *Metrics) ObservePolicyCache(f func() (hits, misses uint64, entries int)) {
	m.policyCache.f.Store(&f)
}

// cacheCollector exports the policy cache's own counters at scrape time, so
// the cache hot path does not touch Prometheus.
type cacheCollector struct {
	f                     atomic.Pointer[func() (hits, misses uint64, entries int)]
	hits, misses, entries *prometheus.Desc
}

func newCacheCollector() *cacheCollector {
	return &cacheCollector{
		hits:    prometheus.NewDesc("pgmoat_policy_cache_hits_total", "Policy decisions served from the cache.", nil, nil),
		misses:  prometheus.NewDesc("pgmoat_policy_cache_misses_total", "Policy decisions that had to parse and analyse the text.", nil, nil),
		entries: prometheus.NewDesc("pgmoat_policy_cache_entries", "Decisions currently cached.", nil, nil),
	}
}

func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.hits
	ch <- c.misses
	ch <- c.entries
}

func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.f.Load()
	if f == nil {
		return
	}
	hits, misses, entries := (*f)()
	ch <- prometheus.MustNewConstMetric(c.hits, prometheus.CounterValue, float64(hits))
	ch <- prometheus.MustNewConstMetric(c.misses, prometheus.CounterValue, float64(misses))
	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(entries))
}

// labelCap bounds the distinct values of a label: the first max values seen
// keep their own value, later ones become "other". The empty value is
// always kept and does not count. Safe for concurrent use.
type labelCap struct {
	mu    sync.Mutex
	limit int
	seen  map[string]struct{}
}

func newLabelCap(limit int) *labelCap {
	return &labelCap{limit: limit, seen: make(map[string]struct{})}
}

func (c *labelCap) value(v string) string {
	if v == "" {
		return v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.seen[v]; ok {
		return v
	}
	if len(c.seen) < c.limit {
		c.seen[v] = struct{}{}
		return v
	}
	return otherLabel
}
