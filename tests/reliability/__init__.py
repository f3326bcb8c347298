"""The fault suite (issue 13, item 4): what gpumgr keeps when its engines, its upstreams, its
disk, its GPU or its own process fail, and what its control plane refuses."""
