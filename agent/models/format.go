package models

import (
	"errors"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// openFile verifies a signed model file with the control plane's key and
// decodes it. Placeholder until the model file format lands.
func openFile(signed []byte, vk *pqcrypto.VerifyingKey) (Spec, error) {
	return Spec{}, refuse(ReasonFormat, "%v", errors.New("model file format not available yet"))
}
