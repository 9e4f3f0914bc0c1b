module switchyard.dev/e2e/controlplane/crane

go 1.26.8

require github.com/google/go-containerregistry v0.21.9 // indirect
