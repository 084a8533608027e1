package kube

import "golang.org/x/time/rate"

// newLimiter is the overall queue rate: 50/s with bursts of 300, client-go's default for
// controllers.
func newLimiter() *rate.Limiter { return rate.NewLimiter(rate.Limit(50), 300) }
