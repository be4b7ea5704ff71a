-- pgmoat demo schema.
--
-- Runs as the superuser "postgres" inside the (already created) database
-- "app". It sets up what pgmoat expects of a multi-tenant database:
--   * app_owner owns every table, so RLS does not exempt pgmoat's role;
--   * pgmoat is the role pgmoat connects as: it owns nothing and is neither
--     superuser nor BYPASSRLS, so FORCEd RLS policies always apply to it;
--   * customers and orders are protected (RLS enabled and forced, keyed on
--     app.current_tenant_id with the NULLIF form, see DESIGN.md section 10);
--   * plans is shared (no tenant column, no RLS, declared in pgmoat.yaml);
--   * audit_raw has a tenant column but no RLS: Postgres lets pgmoat's role
--     read every tenant's rows there, so pgmoat must block it.

BEGIN;

CREATE ROLE app_owner NOLOGIN;
CREATE ROLE pgmoat LOGIN PASSWORD 'pgmoat_secret'
    NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;

-- PostgreSQL 15 no longer grants CREATE on public to everyone; app_owner
-- needs it to own the tables created below.
GRANT USAGE, CREATE ON SCHEMA public TO app_owner;
GRANT USAGE ON SCHEMA public TO pgmoat;
SET ROLE app_owner;

CREATE TABLE public.customers (
    id        bigserial PRIMARY KEY,
    tenant_id text NOT NULL CHECK (tenant_id <> ''),
    name      text NOT NULL,
    email     text
);
CREATE INDEX customers_tenant_id_idx ON public.customers (tenant_id, id);

CREATE TABLE public.orders (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL CHECK (tenant_id <> ''),
    customer_id bigint REFERENCES public.customers (id),
    amount      numeric(12,2) NOT NULL,
    status      text NOT NULL DEFAULT 'new',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_tenant_id_idx ON public.orders (tenant_id, id);
CREATE INDEX orders_tenant_customer_idx ON public.orders (tenant_id, customer_id);

-- NULLIF: once any SET LOCAL has committed on a server connection the
-- setting reads '' instead of NULL; without NULLIF rows with tenant '' would
-- become visible. The CHECK constraints above keep such rows out anyway.
ALTER TABLE public.customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.customers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.customers FOR ALL
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));

ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.orders FOR ALL
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));

-- Shared reference data: no tenant column, no RLS, read-only for pgmoat.
CREATE TABLE public.plans (
    id    int PRIMARY KEY,
    name  text,
    price numeric
);

-- A tenant column without RLS: Postgres would hand every tenant's rows to
-- pgmoat's role, so pgmoat must refuse statements that touch it.
CREATE TABLE public.audit_raw (
    id        bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    event     text
);
CREATE INDEX audit_raw_tenant_id_idx ON public.audit_raw (tenant_id, id);

GRANT SELECT, INSERT, UPDATE, DELETE ON public.customers, public.orders TO pgmoat;
GRANT USAGE, SELECT ON SEQUENCE public.customers_id_seq, public.orders_id_seq TO pgmoat;
GRANT SELECT ON public.plans TO pgmoat;
GRANT SELECT, INSERT ON public.audit_raw TO pgmoat;
GRANT USAGE, SELECT ON SEQUENCE public.audit_raw_id_seq TO pgmoat;

RESET ROLE;

-- Rows, inserted as the superuser (which bypasses RLS). Explicit ids keep
-- the foreign keys readable; the sequences are moved past them below.
INSERT INTO public.customers (id, tenant_id, name, email) VALUES
    (1, 'acme',   'Wile E. Coyote', 'wile@acme.example'),
    (2, 'acme',   'Road Runner',    'beep@acme.example'),
    (3, 'acme',   'Elmer Fudd',     NULL),
    (4, 'globex', 'Hank Scorpio',   'hank@globex.example'),
    (5, 'globex', 'Homer Simpson',  'homer@globex.example');
SELECT setval('public.customers_id_seq', (SELECT max(id) FROM public.customers));

INSERT INTO public.orders (id, tenant_id, customer_id, amount, status) VALUES
    (1, 'acme',   1, 120.00, 'new'),
    (2, 'acme',   1,  35.50, 'paid'),
    (3, 'acme',   2, 999.99, 'shipped'),
    (4, 'acme',   3,  12.00, 'new'),
    (5, 'globex', 4, 5000.00, 'paid'),
    (6, 'globex', 5,   42.00, 'new'),
    (7, 'globex', 5,   17.25, 'cancelled');
SELECT setval('public.orders_id_seq', (SELECT max(id) FROM public.orders));

INSERT INTO public.plans (id, name, price) VALUES
    (1, 'free',       0),
    (2, 'pro',       49),
    (3, 'enterprise', 499);

INSERT INTO public.audit_raw (tenant_id, event) VALUES
    ('acme',   'login wile'),
    ('acme',   'export orders'),
    ('globex', 'login hank'),
    ('globex', 'delete customer 6');

COMMIT;
