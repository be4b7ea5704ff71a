// Package demo holds the demo database that `make run` and the tests load:
// a multi-tenant schema with protected (RLS), shared and unprotected tables.
package demo

import _ "embed"

// Schema is schema.sql. It must run as a superuser inside an existing,
// empty database (conventionally "app"); it creates the roles app_owner and
// pgmoat (password pgmoat_secret), the tables customers and orders
// (protected), plans (shared) and audit_raw (tenant column, no RLS), and rows
// for the tenants acme and globex. Roles are cluster-wide, so it can run only
// once per cluster.
//
//go:embed schema.sql
var Schema string

// Config is pgmoat.yaml, the demo's configuration, with the placeholder
// @PGPORT@ for the port of PostgreSQL on 127.0.0.1.
//
//go:embed pgmoat.yaml
var Config string
