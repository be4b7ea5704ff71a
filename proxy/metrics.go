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

// Config reload and catalog refresh results: the result label of
// pgmoat_config_reloads_total and pgmoat_catalog_refreshes_total.
const (
	ReloadSuccess = "success"
	ReloadFailure = "failure"
)

// connState is a client connection's state: the state label of
// pgmoat_client_connections.
type connState int

const (
	// stateAuthenticating: not serving statements yet (startup, TLS,
	// authentication, connecting upstream) or no longer (closing).
	stateAuthenticating connState = iota
	// stateIdle: ready, waiting for the client's next statement (inside a
	// transaction or not).
	stateIdle
	// stateActive: a client batch (a Query, or extended-protocol messages
	// up to Sync) has been sent and its ReadyForQuery not yet relayed.
	stateActive
	numConnStates
)

var connStateNames = [numConnStates]string{"authenticating", "idle", "active"}

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
//	pgmoat_client_connections              gauge      state (authenticating, idle, active)
//	pgmoat_client_connections_total        counter    result (Result*)
//	pgmoat_client_bytes_received_total     counter
//	pgmoat_client_bytes_sent_total         counter
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
//	pgmoat_statement_duration_seconds      histogram  100µs..30s
//	pgmoat_catalog_refreshes_total         counter    result (Reload*)
//	pgmoat_config_reloads_total            counter    result (Reload*)
//	pgmoat_config_last_reload_successful   gauge      1 or 0
//	pgmoat_config_last_reload_success_timestamp_seconds  gauge  Unix time of the startup load or the last good reload
//	pgmoat_build_info                      gauge      version, goversion; always 1
type Metrics struct {
	clientConns      *prometheus.GaugeVec
	connStates       [numConnStates]prometheus.Gauge // clientConns' series, resolved once
	clientConnsTotal *prometheus.CounterVec
	bytesReceived    prometheus.Counter
	bytesSent        prometheus.Counter
	authFailures     *prometheus.CounterVec
	statements       *prometheus.CounterVec
	allowedStmts     prometheus.Counter // statements' "allowed" series, resolved once: counted per statement
	blocked          *prometheus.CounterVec
	injections       prometheus.Counter
	upstreamConns    prometheus.Gauge
	upstreamErrors   prometheus.Counter
	decisionSeconds  prometheus.Histogram
	statementSeconds prometheus.Histogram
	refreshes        *prometheus.CounterVec
	reloads          *prometheus.CounterVec
	reloadOK         prometheus.Gauge
	reloadTime       prometheus.Gauge
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
		clientConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgmoat_client_connections",
			Help: "Client connections currently open, by state: authenticating (not ready yet, or closing), idle (waiting for the client), active (a statement in progress).",
		}, []string{"state"}),
		clientConnsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgmoat_client_connections_total",
			Help: "Client connections closed, by how they ended.",
		}, []string{"result"}),
		bytesReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgmoat_client_bytes_received_total",
			Help: "Bytes of protocol messages received from clients after authentication.",
		}),
		bytesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgmoat_client_bytes_sent_total",
			Help: "Bytes of protocol messages relayed to clients after authentication.",
		}),
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
		statementSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pgmoat_statement_duration_seconds",
			Help: "Time from a client's Query or Sync passing through pgmoat to the ReadyForQuery that answers it (the database's time included).",
			Buckets: []float64{
				1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
			},
		}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgmoat_catalog_refreshes_total",
			Help: "Catalog snapshot loads from the upstream database, by result.",
		}, []string{"result"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgmoat_config_reloads_total",
			Help: "Configuration reloads, by result.",
		}, []string{"result"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgmoat_config_last_reload_successful",
			Help: "Whether the last configuration reload succeeded (1) or was refused (0).",
		}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgmoat_config_last_reload_success_timestamp_seconds",
			Help: "Unix time of the last configuration load that succeeded: at startup or on reload.",
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
		m.clientConns, m.clientConnsTotal, m.bytesReceived, m.bytesSent,
		m.authFailures, m.statements, m.blocked,
		m.injections, m.upstreamConns, m.upstreamErrors, m.decisionSeconds,
		m.statementSeconds, m.refreshes, m.reloads, m.reloadOK, m.reloadTime, m.buildInfo, m.policyCache,
	)

	// Create the closed-set series up front, so that they read 0 rather
	// than being absent (rate() and alerts need the series to exist).
	for _, r := range []string{ResultOK, ResultAuthFailed, ResultProtocolError, ResultUpstreamError, ResultRefused} {
		m.clientConnsTotal.WithLabelValues(r)
	}
	for _, r := range []string{AuthReasonUnknownUser, AuthReasonBadPassword, AuthReasonProtocol, AuthReasonTimeout, AuthReasonTLSRequired} {
		m.authFailures.WithLabelValues(r)
	}
	for _, d := range []string{DecisionAllowed, DecisionBlocked, DecisionAudited, DecisionAdmin} {
		m.statements.WithLabelValues(d)
	}
	m.allowedStmts = m.statements.WithLabelValues(DecisionAllowed)
	for _, r := range []string{ReloadSuccess, ReloadFailure} {
		m.reloads.WithLabelValues(r)
		m.refreshes.WithLabelValues(r)
	}
	for s, name := range connStateNames {
		m.connStates[s] = m.clientConns.WithLabelValues(name)
	}
	m.reloadOK.Set(1) // the config loaded at startup is valid, or we would not be running
	m.reloadTime.SetToCurrentTime()
	return m
}

// ClientConnected counts a client connection opening; it starts in state
// authenticating.
func (m *Metrics) ClientConnected() { m.connStates[stateAuthenticating].Inc() }

// ClientDisconnected counts a client connection closing, by result (a
// Result* constant). Call it once per ClientConnected, when the connection
// is in state authenticating again (a session that became ready returns to
// it as it ends).
func (m *Metrics) ClientDisconnected(result string) {
	m.connStates[stateAuthenticating].Dec()
	m.clientConnsTotal.WithLabelValues(result).Inc()
}

// clientState moves one client connection from one state to another.
func (m *Metrics) clientState(from, to connState) {
	m.connStates[from].Dec()
	m.connStates[to].Inc()
}

// ClientBytesReceived counts n bytes received from a client. Callers add up
// a batch's messages and call it once per batch, not per message.
func (m *Metrics) ClientBytesReceived(n int) {
	if n > 0 {
		m.bytesReceived.Add(float64(n))
	}
}

// ClientBytesSent counts n bytes relayed to a client; like
// ClientBytesReceived, once per write rather than per message.
func (m *Metrics) ClientBytesSent(n int) {
	if n > 0 {
		m.bytesSent.Add(float64(n))
	}
}

// StatementDuration observes the time from a client batch's last message
// to the ReadyForQuery that answers it.
func (m *Metrics) StatementDuration(d time.Duration) { m.statementSeconds.Observe(d.Seconds()) }

// CatalogRefreshed counts a catalog snapshot load from upstream; err is why
// it failed, or nil.
func (m *Metrics) CatalogRefreshed(err error) {
	if err != nil {
		m.refreshes.WithLabelValues(ReloadFailure).Inc()
		return
	}
	m.refreshes.WithLabelValues(ReloadSuccess).Inc()
}

// AuthFailed counts a failed authentication; reason is an AuthReason*
// constant (AuthError.Reason).
func (m *Metrics) AuthFailed(reason string) { m.authFailures.WithLabelValues(reason).Inc() }

// Statement counts one statement by decision (a Decision* constant).
func (m *Metrics) Statement(decision string) {
	if decision == DecisionAllowed {
		// Nearly every statement: skip WithLabelValues' hashing and
		// locked map lookup.
		m.allowedStmts.Inc()
		return
	}
	m.statements.WithLabelValues(decision).Inc()
}

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
	m.reloadTime.SetToCurrentTime()
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

// batchRing is how many pipelined batches of one session are timed at once;
// batches sent while that many are outstanding are not timed.
const batchRing = 16

// batchClock follows one ready session's client batches, each ended by a
// Query, Sync or FunctionCall, to the ReadyForQuery that answers it: it
// observes pgmoat_statement_duration_seconds and moves the session between
// states idle and active. The client relay calls sent, the server relay
// answered; the session calls close once as it ends. It allocates nothing
// per batch.
//
// The server answers batches in order, so the oldest outstanding batch is
// the one a ReadyForQuery answers. A batch end the server ignores (a Sync
// during COPY FROM STDIN, a Query skipped after an extended-protocol error)
// gets no ReadyForQuery; settled, if not nil, reports that no reply is
// owed, and answered then forgets every outstanding batch.
type batchClock struct {
	m       *Metrics
	settled func() bool

	mu           sync.Mutex
	nSent, nDone uint64 // batches sent and answered; nDone <= nSent
	starts       [batchRing]struct {
		seq uint64 // the batch's number + 1; 0 for a slot never used
		at  time.Time
	}
	closed bool
}

// newBatchClock moves a session that just became ready from authenticating
// to idle.
func newBatchClock(m *Metrics, settled func() bool) *batchClock {
	m.clientState(stateAuthenticating, stateIdle)
	return &batchClock{m: m, settled: settled}
}

func (b *batchClock) state() connState {
	if b.nSent > b.nDone {
		return stateActive
	}
	return stateIdle
}

// sent records a client batch ending at now, once its last message is
// queued for the server.
func (b *batchClock) sent(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	if b.nSent-b.nDone < batchRing {
		s := &b.starts[b.nSent%batchRing]
		s.seq, s.at = b.nSent+1, now
	}
	if b.nSent == b.nDone {
		b.m.clientState(stateIdle, stateActive)
	}
	b.nSent++
}

// answered records a ReadyForQuery relayed to the client.
func (b *batchClock) answered() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || b.nSent == b.nDone {
		return
	}
	if s := &b.starts[b.nDone%batchRing]; s.seq == b.nDone+1 {
		b.m.StatementDuration(time.Since(s.at))
	}
	b.nDone++
	// settled is called under b.mu: a batch the client relay queues for
	// the server before settled looks is owed a reply (settled is false),
	// and one it queues after is recorded by sent after this returns.
	if b.nSent > b.nDone && b.settled != nil && b.settled() {
		b.nDone = b.nSent
	}
	if b.nSent == b.nDone {
		b.m.clientState(stateActive, stateIdle)
	}
}

// close moves the session back to authenticating, the state
// Metrics.ClientDisconnected takes it out of. Later calls do nothing.
func (b *batchClock) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	b.m.clientState(b.state(), stateAuthenticating)
}
