package models

import (
	"errors"

	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// openFile verifies a signed model file with the control plane's key
// (fedlearn.Verify: format, digest, content, signature) and returns its
// content, the refusal's reason set from the format's error.
func openFile(signed []byte, vk *pqcrypto.VerifyingKey) (Spec, error) {
	f, err := fedlearn.Verify(signed, vk)
	if err != nil {
		reason := ReasonFormat
		switch {
		case errors.Is(err, fedlearn.ErrDigest):
			reason = ReasonDigest
		case errors.Is(err, fedlearn.ErrUnsigned), errors.Is(err, fedlearn.ErrBadSignature):
			reason = ReasonSignature
		case errors.Is(err, fedlearn.ErrArch), errors.Is(err, fedlearn.ErrWeights), errors.Is(err, fedlearn.ErrSchema):
			reason = ReasonModel
		}
		return Spec{}, &InstallError{Reason: reason, Err: err}
	}
	return Spec{Name: f.Name, Version: f.Version, Digest: f.DigestHex(), Arch: f.Arch, Weights: f.Weights,
		Schema: f.Schema, Labels: f.Labels}, nil
}
