package request

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"signet.dev/keys"
)

// Key is a signing key a local signer holds under a name.
type Key struct {
	Signer      crypto.Signer
	Certificate *x509.Certificate
	Chain       []*x509.Certificate
	// Kinds, when set, are the only kinds this key signs (a declaration,
	// which may cross families). When empty, the key signs the kinds of
	// one family (see Family), and a request asking it for two families
	// is refused whole.
	Kinds []Kind
}

// CheckFunc checks an item's content before it is signed; package
// signet.dev/request/check provides check.Item.
type CheckFunc func(*Item) error

// Sign answers every item of r with the key of its name: it runs check on
// the item (refusing the whole request on the first failure, so nothing is
// signed that a check refuses), signs the TBS with keys.Sign, and verifies
// the result before returning the response.
func Sign(r *Request, named map[string]Key, check CheckFunc) (*Response, error) {
	return sign(r, named, check, false)
}

// SignPartial is Sign for the items whose key is in named; the others are
// left out of the response, for their key holders to sign (see Merge). It
// is an error if no item has a key in named.
func SignPartial(r *Request, named map[string]Key, check CheckFunc) (*Response, error) {
	return sign(r, named, check, true)
}

func sign(r *Request, named map[string]Key, check CheckFunc, partial bool) (*Response, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	var todo []*Item
	for i := range r.Items {
		it := &r.Items[i]
		if _, ok := named[it.Key]; !ok {
			if partial {
				continue
			}
			return nil, fmt.Errorf("item %q: no key named %q given", it.ID, it.Key)
		}
		todo = append(todo, it)
		if check == nil {
			return nil, errors.New("request.Sign: no check function")
		}
		if err := check(it); err != nil {
			return nil, fmt.Errorf("item %q refused: %w", it.ID, err)
		}
	}
	if err := checkKinds(todo, named); err != nil {
		return nil, err
	}
	// Sign on every core: RSA signing and verifying dominate a large
	// request, and crypto.Signers (file keys, crypto11 sessions) are safe
	// for concurrent use.
	if len(todo) == 0 && len(r.Items) > 0 {
		return nil, errors.New("none of the given keys signs any item of the request")
	}
	sigs := make([]Signature, len(todo))
	errs := make([]error, len(todo))
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < min(runtime.GOMAXPROCS(0), len(todo)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				sigs[i], errs[i] = signItem(todo[i], named[todo[i].Key])
			}
		}()
	}
	for i := range todo {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Response{Format: FormatResponse, Request: r.DigestString(), Items: sigs}, nil
}

// checkKinds refuses an item whose kind its key may not sign: one outside
// the key's declared kinds, or, for an undeclared key, one of another
// family than the key's other items in the request. The whole request is
// refused, so no family is signed by default on the strength of item order.
func checkKinds(todo []*Item, named map[string]Key) error {
	first := map[string]*Item{}
	for _, it := range todo {
		k := named[it.Key]
		if len(k.Kinds) > 0 {
			if !slices.Contains(k.Kinds, it.Kind) {
				return fmt.Errorf("item %q (kind %s) refused: key %q is declared to sign only %v", it.ID, it.Kind, it.Key, k.Kinds)
			}
			continue
		}
		f, ok := first[it.Key]
		if !ok {
			first[it.Key] = it
			continue
		}
		if Family(f.Kind) != Family(it.Kind) {
			return fmt.Errorf("item %q (kind %s) refused: key %q also signs item %q of kind %s, another family; a key signs one kind family unless its kinds are declared", it.ID, it.Kind, it.Key, f.ID, f.Kind)
		}
	}
	return nil
}

func signItem(it *Item, k Key) (Signature, error) {
	if k.Signer == nil || k.Certificate == nil {
		return Signature{}, fmt.Errorf("key %q: needs a signer and a certificate", it.Key)
	}
	sig, err := keys.Sign(k.Signer, it.CryptoHash(), it.TBS)
	if err != nil {
		return Signature{}, fmt.Errorf("item %q: signing with key %q: %w", it.ID, it.Key, err)
	}
	if err := keys.Verify(k.Certificate.PublicKey, it.CryptoHash(), it.TBS, sig); err != nil {
		return Signature{}, fmt.Errorf("item %q: key %q made a signature its certificate does not verify: %w", it.ID, it.Key, err)
	}
	s := Signature{ID: it.ID, Signature: sig, Certificate: k.Certificate.Raw}
	for _, c := range k.Chain {
		s.Chain = append(s.Chain, c.Raw)
	}
	return s, nil
}

// Verified is a response item checked against its request item.
type Verified struct {
	Item        *Item
	Signature   []byte
	Certificate *x509.Certificate
	Chain       []*x509.Certificate
}

// Verify checks resp against r: it must name r's digest, answer every item
// exactly once and nothing else, and each signature must verify over the
// item's TBS with the item's hash and the certificate's key. If expect has
// a certificate for an item's key name, the response's certificate must
// carry the same public key. The result is indexed by item id.
func Verify(r *Request, resp *Response, expect map[string]*x509.Certificate) (map[string]*Verified, error) {
	if err := resp.Validate(); err != nil {
		return nil, err
	}
	if want := r.DigestString(); resp.Request != want {
		return nil, fmt.Errorf("response names request %s, not %s: %w", resp.Request, want, ErrWrongRequest)
	}
	out := map[string]*Verified{}
	for _, s := range resp.Items {
		if r.Item(s.ID) == nil {
			return nil, fmt.Errorf("response item %q: %w", s.ID, invalid("the request has no such item"))
		}
	}
	for i := range r.Items {
		it := &r.Items[i]
		s := resp.Signature(it.ID)
		if s == nil {
			return nil, fmt.Errorf("item %q: %w", it.ID, ErrMissing)
		}
		cert, err := x509.ParseCertificate(s.Certificate)
		if err != nil {
			return nil, fmt.Errorf("item %q: certificate: %w", it.ID, err)
		}
		v := &Verified{Item: it, Signature: s.Signature, Certificate: cert}
		for j, der := range s.Chain {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, fmt.Errorf("item %q: chain certificate %d: %w", it.ID, j, err)
			}
			v.Chain = append(v.Chain, c)
		}
		if want := expect[it.Key]; want != nil && !keys.SamePublicKey(want.PublicKey, cert.PublicKey) {
			return nil, fmt.Errorf("item %q: signed by %q, which is not key %q's certificate", it.ID, cert.Subject, it.Key)
		}
		if err := keys.Verify(cert.PublicKey, it.CryptoHash(), it.TBS, s.Signature); err != nil {
			return nil, fmt.Errorf("item %q: %w (key %q, certificate %q)", it.ID, ErrBadSignature, it.Key, cert.Subject)
		}
		out[it.ID] = v
	}
	return out, nil
}

// Merge combines partial responses to r (from SignPartial, or from several
// signers each holding some of the keys) into one, in the request's item
// order. Every part must name r; an item answered twice is an error. The
// result may still be incomplete: Verify says so.
func Merge(r *Request, parts ...*Response) (*Response, error) {
	want := r.DigestString()
	byID := map[string]Signature{}
	for i, p := range parts {
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("response %d: %w", i+1, err)
		}
		if p.Request != want {
			return nil, fmt.Errorf("response %d names request %s, not %s: %w", i+1, p.Request, want, ErrWrongRequest)
		}
		for _, s := range p.Items {
			if r.Item(s.ID) == nil {
				return nil, fmt.Errorf("response %d: item %q: %w", i+1, s.ID, invalid("the request has no such item"))
			}
			if _, dup := byID[s.ID]; dup {
				return nil, fmt.Errorf("response %d: item %q is answered twice", i+1, s.ID)
			}
			byID[s.ID] = s
		}
	}
	out := &Response{Format: FormatResponse, Request: want, Items: []Signature{}}
	for _, it := range r.Items {
		if s, ok := byID[it.ID]; ok {
			out.Items = append(out.Items, s)
		}
	}
	return out, nil
}
