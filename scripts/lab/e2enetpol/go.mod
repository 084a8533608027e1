// Not built here: scripts/lab/build.sh copies e2enetpol_test.go into its build module (which
// pins Kubernetes' modules) and compiles it there. This go.mod only keeps the file out of
// the project's module (`go vet ./...`, `go test ./...` do not see it).
module patronus.local/e2enetpol

go 1.26
