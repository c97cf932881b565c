// One type per combination of the optional Backend capabilities, so that a
// wrapped device has exactly the ones it had (see Backend). Written by a
// script; TestBackendKeepsCapabilities checks every combination.

package metrics

import "github.com/mlskeyd/mlskeyd/keystore"

type devBare struct {
	*device
}

type devL struct {
	*device
	lister
}

type devS struct {
	*device
	sealer
}

type devLS struct {
	*device
	lister
	sealer
}

type devC struct {
	*device
	checker
}

type devLC struct {
	*device
	lister
	checker
}

type devSC struct {
	*device
	sealer
	checker
}

type devLSC struct {
	*device
	lister
	sealer
	checker
}

type devA struct {
	*device
	attester
}

type devLA struct {
	*device
	lister
	attester
}

type devSA struct {
	*device
	sealer
	attester
}

type devLSA struct {
	*device
	lister
	sealer
	attester
}

type devCA struct {
	*device
	checker
	attester
}

type devLCA struct {
	*device
	lister
	checker
	attester
}

type devSCA struct {
	*device
	sealer
	checker
	attester
}

type devLSCA struct {
	*device
	lister
	sealer
	checker
	attester
}

type devV struct {
	*device
	activator
}

type devLV struct {
	*device
	lister
	activator
}

type devSV struct {
	*device
	sealer
	activator
}

type devLSV struct {
	*device
	lister
	sealer
	activator
}

type devCV struct {
	*device
	checker
	activator
}

type devLCV struct {
	*device
	lister
	checker
	activator
}

type devSCV struct {
	*device
	sealer
	checker
	activator
}

type devLSCV struct {
	*device
	lister
	sealer
	checker
	activator
}

type devAV struct {
	*device
	attester
	activator
}

type devLAV struct {
	*device
	lister
	attester
	activator
}

type devSAV struct {
	*device
	sealer
	attester
	activator
}

type devLSAV struct {
	*device
	lister
	sealer
	attester
	activator
}

type devCAV struct {
	*device
	checker
	attester
	activator
}

type devLCAV struct {
	*device
	lister
	checker
	attester
	activator
}

type devSCAV struct {
	*device
	sealer
	checker
	attester
	activator
}

type devLSCAV struct {
	*device
	lister
	sealer
	checker
	attester
	activator
}

// withCaps builds the wrapper for a capability mask (capLister | ...).
var withCaps = [32]func(d *device) keystore.Backend{
	0:  func(d *device) keystore.Backend { return devBare{d} },
	1:  func(d *device) keystore.Backend { return devL{d, lister{d}} },
	2:  func(d *device) keystore.Backend { return devS{d, sealer{d}} },
	3:  func(d *device) keystore.Backend { return devLS{d, lister{d}, sealer{d}} },
	4:  func(d *device) keystore.Backend { return devC{d, checker{d}} },
	5:  func(d *device) keystore.Backend { return devLC{d, lister{d}, checker{d}} },
	6:  func(d *device) keystore.Backend { return devSC{d, sealer{d}, checker{d}} },
	7:  func(d *device) keystore.Backend { return devLSC{d, lister{d}, sealer{d}, checker{d}} },
	8:  func(d *device) keystore.Backend { return devA{d, attester{d}} },
	9:  func(d *device) keystore.Backend { return devLA{d, lister{d}, attester{d}} },
	10: func(d *device) keystore.Backend { return devSA{d, sealer{d}, attester{d}} },
	11: func(d *device) keystore.Backend { return devLSA{d, lister{d}, sealer{d}, attester{d}} },
	12: func(d *device) keystore.Backend { return devCA{d, checker{d}, attester{d}} },
	13: func(d *device) keystore.Backend { return devLCA{d, lister{d}, checker{d}, attester{d}} },
	14: func(d *device) keystore.Backend { return devSCA{d, sealer{d}, checker{d}, attester{d}} },
	15: func(d *device) keystore.Backend { return devLSCA{d, lister{d}, sealer{d}, checker{d}, attester{d}} },
	16: func(d *device) keystore.Backend { return devV{d, activator{d}} },
	17: func(d *device) keystore.Backend { return devLV{d, lister{d}, activator{d}} },
	18: func(d *device) keystore.Backend { return devSV{d, sealer{d}, activator{d}} },
	19: func(d *device) keystore.Backend { return devLSV{d, lister{d}, sealer{d}, activator{d}} },
	20: func(d *device) keystore.Backend { return devCV{d, checker{d}, activator{d}} },
	21: func(d *device) keystore.Backend { return devLCV{d, lister{d}, checker{d}, activator{d}} },
	22: func(d *device) keystore.Backend { return devSCV{d, sealer{d}, checker{d}, activator{d}} },
	23: func(d *device) keystore.Backend { return devLSCV{d, lister{d}, sealer{d}, checker{d}, activator{d}} },
	24: func(d *device) keystore.Backend { return devAV{d, attester{d}, activator{d}} },
	25: func(d *device) keystore.Backend { return devLAV{d, lister{d}, attester{d}, activator{d}} },
	26: func(d *device) keystore.Backend { return devSAV{d, sealer{d}, attester{d}, activator{d}} },
	27: func(d *device) keystore.Backend { return devLSAV{d, lister{d}, sealer{d}, attester{d}, activator{d}} },
	28: func(d *device) keystore.Backend { return devCAV{d, checker{d}, attester{d}, activator{d}} },
	29: func(d *device) keystore.Backend { return devLCAV{d, lister{d}, checker{d}, attester{d}, activator{d}} },
	30: func(d *device) keystore.Backend { return devSCAV{d, sealer{d}, checker{d}, attester{d}, activator{d}} },
	31: func(d *device) keystore.Backend {
		return devLSCAV{d, lister{d}, sealer{d}, checker{d}, attester{d}, activator{d}}
	},
}
