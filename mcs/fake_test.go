package mcs

import (
	kubefake "k8s.io/client-go/kubernetes/fake"
	mcsfake "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned/fake"

	"github.com/patronus/patronus/kube/kclient"
	kfake "github.com/patronus/patronus/kube/kclient/fake"
)

func fakeKube() kclient.Kube { return kfake.Kube(kubefake.NewClientset()) }
func fakeMCS() kclient.MCS   { return kfake.MCS(mcsfake.NewSimpleClientset()) }
