package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/pflag"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/policy"
	"github.com/pgmoat/pgmoat/proxy"
)

// runProxy wires pgmoat together and serves until ctx is cancelled; once
// hurry is closed, a graceful shutdown under way ends sessions at once. cfg
// was loaded from src.path; src says how to reload it.
func runProxy(ctx context.Context, hurry <-chan struct{}, cfg *config.Config, logger *slog.Logger, src reloadSource) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := proxy.NewMetrics(reg, cfg.Metrics.TenantLabelCap)
	metrics.SetBuildInfo(version)

	connector, err := proxy.NewPgConnector(cfg.Upstream.DSN, cfg.Upstream.Password, cfg.Upstream.ConnectTimeout)
	if err != nil {
		return err
	}
	auth, err := proxy.NewPasswordAuth(cfg.Users)
	if err != nil {
		return fmt.Errorf("users: %w", err)
	}
	database := cfg.Upstream.Database
	if database == "" {
		database = connector.Database()
	}

	pol := &policyHolder{cfg: cfg, connector: connector, log: logger, metrics: metrics}
	if err := pol.refresh(ctx); err != nil {
		return fmt.Errorf("load the catalog from upstream: %w", err)
	}
	metrics.ObservePolicyCache(func() (uint64, uint64, int) { return pol.engine.Load().CacheStats() })
	logAudit(ctx, connector, cfg, logger)

	httpLn, err := net.Listen("tcp", cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("metrics_listen: %w", err)
	}
	httpSrv := &http.Server{Handler: proxy.NewHTTPHandler(reg, pol.ready, proxy.HTTPOptions{Pprof: cfg.Metrics.Pprof}), ReadHeaderTimeout: 10 * time.Second}
	go httpSrv.Serve(httpLn)
	defer httpSrv.Close()

	tlsConfig, err := proxy.LoadTLS(cfg.TLS)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	audit, err := proxy.OpenAuditLog(cfg.Log, os.Stderr) // log.audit_file needs a restart to change
	if err != nil {
		return err
	}
	defer audit.Close()
	srv := proxy.NewServer(proxy.Options{
		Config:    cfg,
		Logger:    logger,
		Audit:     audit,
		Metrics:   metrics,
		Auth:      auth,
		Connector: connector,
		Engine:    pol.engine.Load,
		Database:  database,
		TLS:       tlsConfig,
	})
	pol.endTenants = srv.EndTenantSessions
	go pol.refreshEvery(ctx, cfg.Policy.CatalogRefresh)
	rl := &reloader{src: src, log: logger, metrics: metrics, srv: srv, pol: pol, cur: cfg, auth: auth, audit: audit}
	go rl.watch(ctx)
	served := make(chan struct{})
	defer close(served)
	go func() {
		select {
		case <-hurry:
			srv.Hurry()
		case <-served:
		}
	}()
	logger.Info("pgmoat listening", "listen", ln.Addr().String(), "metrics_listen", httpLn.Addr().String(),
		"database", database, "mode", cfg.Policy.Mode, "tls", tlsConfig != nil, "users", len(cfg.Users), "config", src.path)
	err = srv.Serve(ctx, ln)
	logger.Info("pgmoat stopped")
	return err
}

// policyHolder keeps the current policy engine, rebuilt when a periodic
// catalog snapshot differs from the last one and when a configuration reload
// changes the policy keys. A failed refresh keeps the previous engine.
type policyHolder struct {
	connector *proxy.PgConnector
	log       *slog.Logger
	metrics   *proxy.Metrics // counts refreshes
	engine    atomic.Pointer[policy.Engine]
	lastErr   atomic.Pointer[error]
	// endTenants, if set, ends the open tenant sessions (set before any
	// refresh but the first).
	endTenants func(why string) int

	refreshing sync.Mutex // one refresh at a time (periodic, SIGHUP), so lastErr is the latest's

	mu  sync.Mutex // guards cfg and cat, and orders engine rebuilds
	cfg *config.Config
	cat *policy.Catalog // the current engine's
}

func (p *policyHolder) refresh(ctx context.Context) error {
	p.refreshing.Lock()
	defer p.refreshing.Unlock()
	err := p.load(ctx)
	p.metrics.CatalogRefreshed(err)
	if err != nil {
		p.lastErr.Store(&err)
		return err
	}
	p.lastErr.Store(nil)
	return nil
}

func (p *policyHolder) load(ctx context.Context) error {
	conn, err := p.connector.Open(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	p.mu.Lock()
	setting := p.cfg.Policy.TenantSetting // needs a restart to change
	p.mu.Unlock()
	cat, err := proxy.LoadCatalog(ctx, conn, setting)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cat != nil && reflect.DeepEqual(cat, p.cat) {
		return nil // keep the engine and its warm decision cache
	}
	e := policy.NewEngine(proxy.PolicyRules(p.cfg), cat, p.cfg.Policy.CacheSize)
	if p.engine.Load() != nil {
		p.log.Info("catalog changed; policy rebuilt", "relations", len(cat.Relations), "functions", len(cat.Functions))
	} else {
		for _, f := range e.Findings() {
			p.log.Warn("policy finding", "finding", f)
		}
	}
	old := p.cat
	p.cat = cat
	p.engine.Store(e)
	if added := newSettings(old, cat); len(added) > 0 && p.endTenants != nil {
		// A tenant session may have set them while they were not a
		// policy's, and SET lasts for the session; the new policy applies
		// from its next statement, inside a transaction too: end those
		// sessions now.
		n := p.endTenants(fmt.Sprintf("row-level security policies now read %s", strings.Join(added, ", ")))
		p.log.Warn("policies read settings they did not before; open tenant sessions ended",
			"settings", added, "sessions", n)
	}
	return nil
}

// newSettings lists the settings policies read in cat but not in old.
func newSettings(old, cat *policy.Catalog) []string {
	if old == nil {
		return nil
	}
	var added []string
	for _, s := range cat.PolicySettings {
		if !slices.Contains(old.PolicySettings, s) {
			added = append(added, s)
		}
	}
	return added
}

// setConfig makes cfg the configuration the policy is built from. If its
// rules or cache size differ from the current ones, the engine is rebuilt
// at once from the current catalog snapshot.
func (p *policyHolder) setConfig(cfg *config.Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.cfg
	p.cfg = cfg
	rules := proxy.PolicyRules(cfg)
	if reflect.DeepEqual(rules, proxy.PolicyRules(old)) && cfg.Policy.CacheSize == old.Policy.CacheSize {
		return // keep the warm decision cache
	}
	e := policy.NewEngine(rules, p.cat, cfg.Policy.CacheSize)
	for _, f := range e.Findings() {
		p.log.Warn("policy finding", "finding", f)
	}
	p.engine.Store(e)
	p.log.Info("policy configuration changed; policy rebuilt")
}

func (p *policyHolder) refreshEvery(ctx context.Context, every time.Duration) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := p.refresh(ctx); err != nil && ctx.Err() == nil {
				p.log.Warn("catalog refresh failed; keeping the previous snapshot", "err", err)
			}
		}
	}
}

// ready is /readyz: the catalog is loaded and the last refresh (every
// policy.catalog_refresh) reached the upstream, so a probe costs no
// connection. The configuration is valid by construction: a reload that
// fails validation keeps the running one and does not make pgmoat unready.
func (p *policyHolder) ready() error {
	if p.engine.Load() == nil {
		return errors.New("catalog not loaded")
	}
	if err := p.lastErr.Load(); err != nil {
		return fmt.Errorf("upstream: %w", *err)
	}
	return nil
}

// configPollInterval is how often run checks the config file for changes.
const configPollInterval = 2 * time.Second

// reloadSource is where a running pgmoat gets a new configuration from.
type reloadSource struct {
	path  string
	flags *pflag.FlagSet // applied again on every reload; may be nil
	// level is the process log's level, set from log.level on reload;
	// nil: the level does not change.
	level *slog.LevelVar
	// hup delivers SIGHUP, which asks for a reload; nil: no signal.
	hup <-chan os.Signal
	// pollEvery is how often the file's content is compared with the last
	// one seen; a change triggers a reload. 0: the file is not watched.
	pollEvery time.Duration
}

// reloader applies configuration reloads to a running proxy. Only watch
// calls reload, so reloads never overlap.
type reloader struct {
	src     reloadSource
	log     *slog.Logger
	metrics *proxy.Metrics
	srv     *proxy.Server
	pol     *policyHolder
	// cur is the running configuration: the startup one with the
	// reloadable keys of the last good reload (config.ApplyReload).
	cur   *config.Config
	auth  proxy.Authenticator // built from cur.Users
	audit *proxy.AuditLog     // reopened on SIGHUP, for log rotation
}

// watch reloads on SIGHUP and when the config file's content changes,
// until ctx is cancelled. A file that cannot be read is skipped until it can
// (an editor or a ConfigMap update may replace it in several steps).
func (r *reloader) watch(ctx context.Context) {
	last, _ := fileSum(r.src.path)
	var tick <-chan time.Time
	if r.src.pollEvery > 0 {
		t := time.NewTicker(r.src.pollEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.src.hup:
			if err := r.audit.Reopen(); err != nil {
				r.log.Error("reopening the audit log failed; it goes on in the file it had", "err", err)
			}
			last, _ = fileSum(r.src.path)
			r.reload("SIGHUP")
			// SIGHUP also refreshes the catalog snapshot at once, e.g. after
			// a migration created or changed tables.
			if err := r.pol.refresh(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("catalog refresh failed; keeping the previous snapshot", "err", err)
			}
		case <-tick:
			sum, err := fileSum(r.src.path)
			if err != nil || sum == last {
				continue
			}
			last = sum
			r.reload("file changed")
		}
	}
}

// fileSum is the SHA-256 of the file's content.
func fileSum(path string) ([sha256.Size]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// reload loads the config file again (with the PGMOAT_* environment and the
// flags, as at startup) and applies what can change while running. A
// configuration that fails to load or validate is refused: the running one
// stays, and the failure is logged and counted.
func (r *reloader) reload(trigger string) error {
	err := r.apply(trigger)
	r.metrics.ConfigReloaded(err)
	if err != nil {
		// Load's errors name the file and each key, one per line.
		r.log.Error("configuration reload refused; the running configuration stays",
			"trigger", trigger, "err", err)
	}
	return err
}

func (r *reloader) apply(trigger string) error {
	loaded, err := config.Load(r.src.path, r.src.flags)
	if err != nil {
		return err
	}
	next := r.cur.ApplyReload(loaded)
	changed := config.Changes(r.cur, next)
	var restart []string
	for _, k := range config.Changes(r.cur, loaded) {
		if config.NeedsRestart(k) {
			restart = append(restart, k)
		}
	}
	auth := r.auth
	if slices.Contains(changed, "users") {
		// Only when users changed: deriving SCRAM keys costs one PBKDF2
		// per password user.
		a, err := proxy.NewPasswordAuth(next.Users)
		if err != nil {
			return fmt.Errorf("users: %w", err)
		}
		auth = a
	}
	revoked, err := r.srv.Reload(next, auth)
	if err != nil {
		return err
	}
	r.pol.setConfig(next)
	if r.src.level != nil {
		r.src.level.Set(next.Log.SlogLevel())
	}
	r.cur, r.auth = next, auth
	if len(restart) > 0 {
		r.log.Warn("configuration keys changed that take effect only after a restart; not applied", "keys", restart)
	}
	r.log.Info("configuration reloaded", "trigger", trigger, "changed", changed, "sessions_revoked", revoked)
	return nil
}
