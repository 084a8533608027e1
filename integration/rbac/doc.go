// Package rbac holds the test that installs manifests/ on a real API server and proves,
// with the patronus ServiceAccount's own token, that its RBAC rules allow everything the
// agent does and nothing broader.
package rbac
