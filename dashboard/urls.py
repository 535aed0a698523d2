from django.urls import path

from . import views

app_name = "dashboard"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("accounts/tokens/", views.tokens, name="tokens"),
]
