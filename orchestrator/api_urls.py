"""/api/v1/: one router for every app's API."""

from rest_framework.routers import APIRootView, DefaultRouter

from governance import api as governance_api

from . import api


class _Root(APIRootView):
    token_scopes: dict = {}  # the index of the API: "read" (governance/api_auth.py)


router = DefaultRouter(trailing_slash=True)
router.APIRootView = _Root
# No `.json` suffix variants: the API speaks JSON only, and the viewsets' own methods take no
# `format` argument (every suffixed URL of them was a 500).
router.include_format_suffixes = False
router.register("pipelines", api.PipelineViewSet, basename="pipeline")
router.register("runs", api.RunViewSet, basename="run")
governance_api.register(router)

urlpatterns = router.urls + governance_api.extra_urlpatterns
