from django.urls import path

from . import views

app_name = "governance"
urlpatterns: list = [
    path("reports/", views.reports_page, name="reports"),
    path("reports/export/", views.reports_export, name="reports-export"),
    path("reports/jobs/", views.report_jobs, name="report-jobs"),
    path("reports/jobs/<int:pk>/download/", views.report_job_download, name="report-download"),
    path("reports/access/", views.reports_access, name="reports-access"),
]

# Policies, environments and the audit log (governance/pages.py), in the same namespace.
from .pages import urlpatterns as page_urlpatterns  # noqa: E402

urlpatterns += page_urlpatterns

from .secret_pages import urlpatterns as secret_urlpatterns  # noqa: E402

urlpatterns += secret_urlpatterns

from .change_request_pages import urlpatterns as change_request_urlpatterns  # noqa: E402

urlpatterns += change_request_urlpatterns
